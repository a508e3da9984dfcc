"""Shipped presets: each loads, documents itself and the exact command; composition and precedence."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from zocli.cli import app
from zocli.resolve import PRESETS_DIR as PRESETS
from zocli.resolve import list_presets, resolve

FILES = sorted(PRESETS.glob("*.toml"))
RUNNER = CliRunner(env={"COLUMNS": "300"})


def invoke(*args):
    return RUNNER.invoke(app, list(args), prog_name="zocli")


def test_the_presets_folder_is_what_zocli_lists():
    assert len(FILES) >= 20
    assert {p.stem for p in FILES} == set(list_presets())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_preset_loads_and_validates(path):
    resolved = resolve([path.stem])
    assert resolved.presets == (path.stem,)
    assert {v for v in resolved.sources.values() if v != "default"} <= {f"preset:{path.stem}", "mozo"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_preset_header_and_its_exact_train_command(path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"# {path.stem}: ") and len(first) > len(f"# {path.stem}: ") + 10
    assert "zocli train" in text
    # The documented command is the real one: it parses as `zocli train`, names this preset, and resolves.
    command = re.search(r"zocli train ([^&#\n]*)", text).group(1)
    train = typer.main.get_command(app).commands["train"]
    params = train.make_context("train", shlex.split(command)).params
    assert path.stem in params["preset"]
    resolve(params["preset"], {})


def test_every_listed_description_is_a_whole_sentence():
    cut = [line for line in invoke("presets").stdout.splitlines() if not line.rstrip().endswith((".", ")"))]
    assert cut == []


def test_composition_takes_each_value_from_where_it_was_set():
    resolved = resolve(["cifar100-inc10", "vision-hop-even"], {"lr": 0.01})
    cfg, sources = resolved.config, resolved.sources
    assert (cfg.benchmark, cfg.inc, cfg.vision, cfg.language, cfg.layers, cfg.lr) == (
        "cifar100",
        10,
        "zo",
        "fo",
        "hop-even",
        0.01,
    )
    assert sources["benchmark"] == sources["inc"] == sources["batch_size"] == "preset:cifar100-inc10"
    assert sources["vision"] == sources["layers"] == "preset:vision-hop-even"
    assert sources["lr"] == "flag"
    assert sources["adapter"] == sources["seed"] == "default"
    assert resolved.presets == ("cifar100-inc10", "vision-hop-even")


@pytest.mark.parametrize(
    ("order", "layers"),
    [(("vision-hop-even", "vision-hop-odd"), "hop-odd"), (("vision-hop-odd", "vision-hop-even"), "hop-even")],
)
def test_later_presets_override_earlier_ones(order, layers):
    resolved = resolve(list(order))
    assert resolved.config.layers == layers
    assert resolved.sources["layers"] == f"preset:{order[-1]}"


def test_a_method_preset_after_another_switches_the_branch_back():
    resolved = resolve(["cifar100-inc10", "vision-zo", "fo"])
    assert (resolved.config.vision, resolved.config.language) == ("fo", "fo")
    assert resolved.sources["vision"] == "preset:fo"


def test_presets_lists_every_file_one_line_each():
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(FILES)
    assert [line.split()[0] for line in lines] == [p.stem for p in FILES]


def test_presets_json_describes_every_file():
    result = invoke("presets", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)) == sorted(p.stem for p in FILES)


def test_presets_show_json():
    result = invoke("presets", "show", "cifar100-inc10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["benchmark"] == "cifar100" and data["config"]["inc"] == 10
    assert data["sources"]["benchmark"] == "preset:cifar100-inc10"
    assert data["presets"] == ["cifar100-inc10"]


def test_presets_show_composes_in_order():
    result = invoke("presets", "show", "cifar100-inc10", "vision-hop-even")
    assert result.exit_code == 0, result.output
    assert 'layers = "hop-even"   # preset:vision-hop-even' in result.stdout
    assert 'benchmark = "cifar100"   # preset:cifar100-inc10' in result.stdout


def test_presets_show_unknown_is_a_usage_error():
    result = invoke("presets", "show", "nope")
    assert result.exit_code == 2
    assert "unknown preset 'nope'" in result.stderr
    assert result.stdout == ""


def test_presets_on_a_terminal_wrap_at_words(monkeypatch):
    # On a 100-column terminal the soft-wrapped lines used to break inside numbers ("80.4" / "7").
    import io

    from rich.console import Console

    from zocli.cli import results

    terminal = Console(width=100, file=io.StringIO(), force_terminal=True, color_system=None, soft_wrap=True)
    monkeypatch.setattr(results, "out", terminal)
    assert invoke("presets").exit_code == 0
    text = terminal.file.getvalue()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 100
    words = set(text.split())
    for path in FILES:
        description = next(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert set(description.split(": ", 1)[1].split()) <= words, path.stem


@pytest.mark.parametrize("names", [["demo"], ["cifar100-inc10", "dual-hop-even-mozo"], ["lora"]])
def test_presets_show_output_loads_back_as_a_preset(names, tmp_path):
    # Found: `zocli presets show NAME > my.toml; zocli train --preset my.toml` failed on `null`.
    result = invoke("presets", "show", *names)
    assert result.exit_code == 0, result.output
    path = tmp_path / "my.toml"
    path.write_text(result.stdout)
    assert resolve([str(path)]).config == resolve(names).config


@pytest.mark.parametrize("as_json", [[], ["--json"]], ids=["table", "json"])
def test_no_presets_found_is_an_error_not_an_empty_list(monkeypatch, tmp_path, as_json):
    monkeypatch.setattr("zocli.resolve.PRESETS_DIR", tmp_path)
    result = invoke("presets", *as_json)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: no presets found in {tmp_path}; reinstall zocli"
