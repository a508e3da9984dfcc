"""zocli.flags: every Config field's flag is defined once, and a sweep's argv for any value of any field is
read back by `zocli train` as exactly that value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer

from zocli.cli import app
from zocli.config import KEYS, OPTIONS, Config
from zocli.resolve import resolve
from zocli.sweep import directory
from zocli.sweep.grid import Grid, expand, parse_axes

PACKAGE = Path(__file__).resolve().parent.parent / "zocli"

# The runs' common ground, on which every sample below is a valid config: both branches ZO (so --layers,
# --mozo and a frozen branch are allowed), a prefix scheme (so --layers-n is), 10 classes in tasks of 2.
CONTEXT = 'benchmark = "digits"\ninc = 2\nvision = "zo"\nlanguage = "zo"\nlayers = "prefix"\n'
# Two values of each free-form field that the context accepts, other than the default. Choices and
# booleans take theirs from the field's type.
SAMPLES = {
    "benchmark": ["testbed", "folder:/data/flowers"],
    "class_order": ["seed:1", "/orders/my order.json"],
    "inc": [5, 1],
    "base": [4, 6],
    "prompt": ["an image of {}.", "{}"],
    "data_root": ["/data/a", "/scratch/b c"],
    "model": ["zocli-tiny", "ViT-B-32"],
    "pretrained": ["none", "local-dir:/weights"],
    "lora_rank": [4, 16],
    "lora_alpha": [8.0, 32.5],
    "epochs": [2, 3],
    "batch_size": [16, 64],
    "lr": [0.01, 2.5e-05],
    "weight_decay": [0.1, 1e-08],
    "warmup_steps": [0, 5],
    "max_steps": [3, 7],
    "layers_n": [1, 2],
    "eps": [1e-4, 0.002],
    "eps_vision": [5e-4, 1e-05],
    "eps_language": [0.003, 1e-06],
    "queries": [1, 4],
    "zo_lr": [0.1, 1e-4],
    "zo_lr_scale": [1.0, 0.5],
    "probe_every": [5, 10],
    "zo_chunk": [8, 16],
    "seed": [3, 2**40],
    "device": ["cpu", "cuda:1"],
    "nproc": [2, 3],
    "workers": [0, 2],
    "eval_batch_size": [64, 100],
    "save_every": [10, 20],
    "report_to": ["tensorboard", "wandb"],
    "log_every": [0, 10],
}


def samples(key: str) -> list:
    option = OPTIONS[key]
    if option.kind is bool:
        return [not option.default, option.default]
    if option.choices:
        others = [c for c in option.choices if c != option.default]
        return others[:2] if len(others) >= 2 else [*others, option.default]
    return SAMPLES[key]


def train_reads(argv: list[str]) -> Config:
    """The config `zocli train ARGV` resolves, through its own option parsing (without training)."""
    command = typer.main.get_command(app).commands["train"]
    params = command.make_context("train", list(argv)).params
    return resolve(list(params["preset"] or ()), {key: params[key] for key in KEYS}).config


def sweep_argv(tmp_path: Path, key: str, values: list, presets: tuple[str, ...]) -> list[list[str]]:
    """The `zocli train` arguments of each run of a sweep over `values` of `key`, as `zocli sweep` writes them:
    `--grid KEY=V1,V2` (the seed: `--seeds`, the data root: the sweep's own `--data-root`)."""
    if key == "seed":
        runs = expand(Grid(presets, {}, tuple(values)))
        return [_train_part(directory.command(directory.Sweep(tmp_path, tuple(runs)), run)[1]) for run in runs]
    if key == "data_root":
        (run,) = expand(Grid(presets))
        return [_train_part(directory.command(directory.Sweep(tmp_path, (run,)), run, value)[1]) for value in values]
    text = ",".join("none" if v is None else str(v) for v in values)
    runs = expand(Grid(presets, parse_axes([f"{key.replace('_', '-')}={text}"])))
    return [_train_part(directory.command(directory.Sweep(tmp_path, tuple(runs)), run)[1]) for run in runs]


def _train_part(command: list[str]) -> list[str]:
    start = command.index("train") + 1
    return command[start : command.index("--out")] + command[command.index("--out") + 2 : -1]


def _context(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "context.toml"
    path.write_text(CONTEXT + extra)
    return str(path)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config)])
def test_every_field_round_trips_from_a_sweep_grid_to_train(tmp_path, field):
    values = samples(field)
    assert len(set(values)) == 2, values
    context = _context(tmp_path)
    for value, argv in zip(values, sweep_argv(tmp_path, field, values, (context,))):
        expected = resolve([context], {field: value}).config
        assert getattr(expected, field) == getattr(train_reads(argv), field), (value, argv)
        assert train_reads(argv) == expected, argv


@pytest.mark.parametrize("field", [key for key in KEYS if OPTIONS[key].optional])
def test_none_in_a_grid_clears_what_a_preset_set(tmp_path, field):
    # Found: `--grid layers-n=none,2` gave `train --layers-n None`, which train refused.
    first, second = SAMPLES[field]
    context = _context(tmp_path, f"{field} = {first!r}\n".replace("'", '"'))
    cleared, other = (train_reads(argv) for argv in sweep_argv(tmp_path, field, [None, second], (context,)))
    assert getattr(cleared, field) is None and getattr(other, field) == second
    assert getattr(resolve([context]).config, field) == first


def test_each_help_text_is_written_once():
    sources = {path: path.read_text() for path in PACKAGE.rglob("*.py")}
    for key, option in OPTIONS.items():
        # the first 40 characters: long texts are split across source lines
        probe = option.flag.help[:40]
        where = [path.relative_to(PACKAGE).as_posix() for path, text in sources.items() if probe in text]
        assert where == ["config.py"], (key, where)


def test_help_shows_each_default_from_the_definition():
    from zocli.config import DEFAULT_ZO_CHUNK, MOZO_EPS_VISION

    assert OPTIONS["zo_chunk"].shown_default == str(DEFAULT_ZO_CHUNK)
    assert f"{MOZO_EPS_VISION:g}" in OPTIONS["eps_vision"].shown_default
    assert OPTIONS["conservative"].decls == ("--conservative/--aggressive",)
    assert OPTIONS["conservative"].shown_default == "conservative" and OPTIONS["mozo"].shown_default == "no-mozo"
    assert OPTIONS["queries"].shown_default == str(Config().queries)


def test_a_value_that_is_not_of_the_fields_kind_is_refused():
    with pytest.raises(ValueError, match="not an integer or none"):
        OPTIONS["layers_n"].parse("two")
    with pytest.raises(ValueError, match="not a boolean"):
        OPTIONS["mozo"].parse("maybe")
    with pytest.raises(ValueError, match="cannot be none"):
        OPTIONS["inc"].argv(None)
