"""zocli.cli through Typer's CliRunner: help, a real demo run, eval reproducing it, and the error contract.

Exit codes (DESIGN §9, cli.py): 0 ok; 1 runtime error (missing data, weights, corrupt checkpoint, an
occupied --out); 2 usage error (bad flag value, impossible split, unknown name); 130 interrupted.
"""

import json
import re

import pytest
from typer.testing import CliRunner

from zocli.cli import app

COMMANDS = ["train", "eval", "prepare", "probe-variance", "memory", "presets"]
# The demo needs the whole 5-epoch schedule per task (9 batches of 32 per epoch, so 45 steps) before task 0
# is reliably above 75 %: with 15, 30 or 40 steps task 0 stays at chance (50 %) for seed 0, and 45 steps gave
# 86-99 % for seeds 0-5 when this was written.
DEMO_STEPS = ["--max-steps", "45", "--epochs", "5"]


def invoke(args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="zocli", **kwargs)


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def _flat(text: str) -> str:
    """The text with its line wrapping undone (see the one-line tests below)."""
    return " ".join(text.split())


def _says(text: str, expected: str) -> bool:
    """`expected` occurs in `text`, ignoring whitespace (robust to any terminal wrapping)."""
    return "".join(expected.split()) in "".join(text.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_root):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke(
        ["train", "--preset", "digits-demo", "--data-root", digits_root, "--out", out, *DEMO_STEPS, "--json"]
    )
    assert result.exit_code == 0, result.output
    return out, result


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: zocli " + command in _flat(result.stdout)


def _options(*path: str):
    import typer

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return [p for p in command.params if p.param_type_name == "option" and p.name != "help"]


@pytest.mark.parametrize(
    "path", [("train",), ("eval",), ("prepare",), ("probe-variance",), ("memory",), ("presets", "show")], ids=" ".join
)
def test_every_option_is_described_with_a_readable_metavar(path):
    # Found: --lora-rank, --batch-size, --seed, --eps-vision, ... had no description; metavars read
    # <list[str]>, <int range> and <str> for what are choices.
    for option in _options(*path):
        assert option.help and option.help.strip(), option.opts
        assert option.metavar is not None and not option.metavar.startswith("<"), (option.opts, option.metavar)


def test_train_help_shows_every_default_and_the_choices():
    from zocli.config import KEYS

    options = {o.name: o for o in _options("train")}
    assert set(KEYS) <= set(options)
    for key in KEYS:
        assert "[default: " in options[key].help, key
    assert options["vision"].metavar == "fo|zo|frozen" and options["adapter"].metavar == "moe|lora"
    assert "[default: 10]" in options["inc"].help and "[default: 0.001]" in options["lr"].help
    text = invoke(["train", "--help"], env={"COLUMNS": "250"}).stdout
    assert "One of: all, hop-odd, hop-even, prefix, suffix." in text and "[default: two-sided]" in text


@pytest.mark.parametrize("args", [["--version"], ["--version", "train"]])
def test_version_is_an_eager_option(args):
    # It printed "Missing command." (exit 2) unless a subcommand followed.
    from zocli import __version__

    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == __version__


def test_top_level_help_lists_the_commands():
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert all(command in result.stdout for command in COMMANDS)


# ---------------------------------------------------------------------------------------------- train and eval


def test_train_json_is_one_document_with_a_lower_triangular_matrix(trained):
    out, result = trained
    summary = json.loads(result.stdout)  # the whole of stdout is exactly one JSON document
    matrix = summary["acc_matrix"]
    assert len(matrix) == 5
    assert [len(row) for row in matrix] == [1, 2, 3, 4, 5]
    assert all(0.0 <= a <= 100.0 for row in matrix for a in row)
    assert matrix[0][0] > 75.0  # chance is 50 % on two classes
    assert len(summary["task_sizes"]) == 5 and sum(summary["task_sizes"]) == 360
    assert summary["last"] == summary["seen_accuracy"][-1]
    assert summary["run_dir"] == str(out)
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/manifest.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["acc_matrix"] == matrix


def test_run_files_respect_the_umask(trained):
    # Found: files from the atomic writes were 0600 (mkstemp's mode) while metrics.jsonl was 0644.
    import os

    mask = os.umask(0)
    os.umask(mask)
    out, _ = trained
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "summary.json", "manifest.json", "task_00.safetensors"}
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o666 & ~mask for p in files}


def test_atomic_write_follows_a_group_umask(tmp_path):
    import os

    from zocli.run.files import atomic_write

    previous = os.umask(0o007)  # a shared cluster's group-writable setting
    try:
        atomic_write(tmp_path / "x.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o660


def test_train_records_config_sources(trained):
    out, _ = trained
    saved = json.loads((out / "config.json").read_text())
    assert saved["sources"]["benchmark"] == "preset:digits-demo"
    assert saved["sources"]["max_steps"] == "flag" and saved["config"]["max_steps"] == 45
    assert saved["sources"]["adapter"] == "default"


def test_eval_reproduces_train_exactly(trained, digits_root):
    out, train_result = trained
    trained_summary = json.loads(train_result.stdout)
    result = invoke(["eval", out, "--json", "--data-root", digits_root])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["acc_matrix"] == trained_summary["acc_matrix"]
    assert evaluated["task_sizes"] == trained_summary["task_sizes"]
    for key in ("last", "avg", "forgetting", "bwt"):
        assert evaluated[key] == trained_summary[key], key


def test_eval_one_task_gives_that_row(trained, digits_root):
    out, train_result = trained
    row = json.loads(train_result.stdout)["acc_matrix"][2]
    result = invoke(["eval", out, "--task", 2, "--json", "--data-root", digits_root])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["tasks"] == [2]
    assert evaluated["acc_matrix"] == [row]


def test_eval_task_out_of_range_is_a_usage_error(trained, digits_root):
    out, _ = trained
    result = invoke(["eval", out, "--task", 7, "--data-root", digits_root])
    assert result.exit_code == 2
    _no_traceback(result)
    assert _says(result.stderr, "--task 7")


def test_eval_of_something_that_is_not_a_run(tmp_path):
    result = invoke(["eval", tmp_path])
    assert result.exit_code == 1
    _no_traceback(result)
    assert _says(result.stderr, "not a zocli run directory")


def test_second_train_into_the_same_out_is_refused(trained, digits_root):
    # An occupied --out is reported as a runtime error (RunDirError → exit 1), before any work starts.
    out, _ = trained
    before = (out / "summary.json").read_bytes()
    result = invoke(["train", "--preset", "digits-demo", "--data-root", digits_root, "--out", out, "--max-steps", 1])
    assert result.exit_code == 1
    _no_traceback(result)
    assert _says(result.stderr, "--overwrite")
    assert (out / "summary.json").read_bytes() == before


SHORT = ["--inc", "5", "--max-steps", "2"]  # two tasks of two steps


def test_train_reports_where_what_and_how_long(tmp_path, digits_root):
    # Found: nothing for the first ~12 s, the run directory only at the end, no task counter, no ETA.
    result = invoke(["train", "--preset", "digits-demo", *SHORT, "--data-root", digits_root, "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("zero-shot")]
    assert lines[0].startswith(f"run {tmp_path / 'run'} · cpu · zocli-tiny (none) moe · digits · 2 tasks × 2 steps")
    assert "trainable 101,632 (ZO 0, FO 101,632)" in lines[0]
    # provenance under the banner: the protocol in words, then weights, data, versions and device
    assert lines[1].startswith("protocol: class-incremental, 2 tasks of 5 classes, rehearsal-free")
    assert lines[2].startswith("weights sha256 none (random init) · data generated (digits)") and "torch" in lines[2]
    assert lines[3].startswith("task 0 (1/2): seen accuracy") and "elapsed, ETA 0:00:" in lines[3]
    assert lines[4].startswith("task 1 (2/2): seen accuracy")


def test_train_json_still_reports_progress_on_stderr(tmp_path, digits_root):
    # found: --json silenced stderr, so a sweep's logs/<run>.log held only the start line and the JSON
    args = ["train", "--preset", "digits-demo", *SHORT, "--data-root", digits_root, "--out", tmp_path / "run", "--json"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "task 1 (2/2): seen accuracy" in result.stderr and result.stdout.startswith("{")


def test_train_on_a_terminal_shows_the_task_counter_and_an_eta(tmp_path, digits_root, monkeypatch):
    import io

    from rich.console import Console

    from zocli.cli import train as train_cli

    terminal = Console(file=io.StringIO(), force_terminal=True, width=300, color_system=None)
    monkeypatch.setattr(train_cli, "err", terminal)
    result = invoke(
        [
            "train",
            "--preset",
            "digits-demo",
            *SHORT,
            "--vision",
            "zo",
            "--data-root",
            digits_root,
            "--out",
            tmp_path / "run",
        ]
    )
    assert result.exit_code == 0, result.output
    text = terminal.file.getvalue()
    assert f"training into {tmp_path / 'run'}: loading torch" in text  # at once, before the imports
    assert "(ZO 67,584, FO 34,048)" in text  # the banner splits the trainable parameters
    assert "task 1 · 2/2" in text and "ETA" in text  # the bars: counter and remaining time


# ---------------------------------------------------------------------------------------------- errors


USAGE_ERRORS = {
    "inc-does-not-divide": (["--preset", "digits-demo", "--inc", "3"], "--inc 3"),
    "unknown-benchmark": (["--preset", "digits-demo", "--benchmark", "cifar10"], "did you mean 'cifar100'"),
    "layers-without-zo": (["--preset", "digits-demo", "--layers", "hop-odd"], "--vision zo"),
    "eps-zero": (["--preset", "digits-demo", "--eps", "0"], "--eps"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_exit_2_without_traceback(case, tmp_path, digits_root):
    args, expected = USAGE_ERRORS[case]
    result = invoke(["train", *args, "--data-root", digits_root, "--out", tmp_path / "run"])
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert result.stdout == ""
    assert result.stderr.startswith("error:")
    assert _says(result.stderr, expected)
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize(
    "case",
    [
        "eps-zero",  # short enough not to wrap
        "inc-does-not-divide",
        "unknown-benchmark",
        "layers-without-zo",
    ],
)
def test_usage_errors_are_one_line(case, tmp_path, digits_root, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # what a non-terminal stderr gets by default
    args, _ = USAGE_ERRORS[case]
    result = invoke(["train", *args, "--data-root", digits_root, "--out", tmp_path / "run"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_usage_errors_come_before_the_heavy_imports(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zocli.run.train", None)  # importing it now raises ImportError
    result = invoke(["train", "--preset", "digits-demo", "--eps", "0", "--out", tmp_path / "run"])
    assert result.exit_code == 2, result.exception


def test_missing_data_names_the_prepare_command(tmp_path):
    empty = tmp_path / "empty-root"
    empty.mkdir()
    result = invoke(["train", "--benchmark", "cifar100", "--data-root", empty, "--out", tmp_path / "run"])
    assert result.exit_code == 1, result.output
    _no_traceback(result)
    assert _says(result.stderr, "zocli prepare --benchmark cifar100")
    assert result.stdout == ""


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(["train", "--benchmark", "cifar100", "--data-root", tmp_path, "--out", tmp_path / "run"])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------------------------------------- prepare


def test_prepare_digits_json(tmp_path):
    from zocli.data import catalogue, store

    result = invoke(["prepare", "--benchmark", "digits", "--data-root", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == {"data": str(tmp_path / "digits")}
    dd = store.load(catalogue.get("digits"), tmp_path)
    assert len(dd["train"]) + len(dd["test"]) == 1797


def _partial_cifar(root):
    """A --source folder with the first 10 of CIFAR-100's 100 classes (one image each per split)."""
    import numpy as np
    import PIL.Image

    from zocli.data import catalogue

    for split in ("train", "test"):
        for name in catalogue.get("cifar100").classes[:10]:
            (root / split / name).mkdir(parents=True)
            PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / name / "0.png")
    return root


def test_prepare_refuses_a_partial_source_in_one_line(tmp_path):
    result = invoke(
        [
            "prepare",
            "--benchmark",
            "cifar100",
            "--source",
            _partial_cifar(tmp_path / "src"),
            "--data-root",
            tmp_path / "root",
        ]
    )
    assert result.exit_code == 1, result.output
    _no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "90 of 100" in errors[0] and "--allow-partial" in errors[0]


def test_train_on_a_partial_copy_names_the_empty_tasks_before_training(tmp_path):
    # Found: the partial copy trained tasks 0-2, then died with "ValueError: task_sizes must give...".
    result = invoke(
        [
            "prepare",
            "--benchmark",
            "cifar100",
            "--source",
            _partial_cifar(tmp_path / "src"),
            "--data-root",
            tmp_path / "root",
            "--allow-partial",
        ]
    )
    assert result.exit_code == 0, result.output
    assert _says(result.stderr, "warning:")
    result = invoke(
        [
            "train",
            "--preset",
            "digits-demo",
            "--benchmark",
            "cifar100",
            "--inc",
            "10",
            "--data-root",
            tmp_path / "root",
            "--out",
            tmp_path / "run",
        ]
    )
    assert result.exit_code == 1, result.output
    _no_traceback(result)
    assert _says(result.stderr, "no train images for task(s)") and _says(result.stderr, "--overwrite")
    assert not (tmp_path / "run").exists()


def test_a_resnet_model_is_a_usage_error(tmp_path, digits_root):
    result = invoke(
        ["train", "--preset", "digits-demo", "--model", "RN50", "--data-root", digits_root, "--out", tmp_path / "run"]
    )
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert _says(result.stderr, "choose a ViT model")


def test_prepare_over_an_existing_copy_says_it_kept_it(tmp_path):
    # Found: prepare --source NEWDIR over an existing copy kept the old one silently and exited 0.
    assert invoke(["prepare", "--benchmark", "digits", "--data-root", tmp_path]).exit_code == 0
    result = invoke(["prepare", "--benchmark", "digits", "--data-root", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"existing": True, "data": str(tmp_path / "digits")}
    assert _says(result.stderr, "digits is already prepared") and _says(result.stderr, "(1437 train + 360 test images)")
    assert _says(result.stderr, "--overwrite rebuilds it")


def test_prepare_with_nothing_to_do_is_a_usage_error():
    result = invoke(["prepare"])
    assert result.exit_code == 2
    _no_traceback(result)


# ---------------------------------------------------------------------------------------------- model and device errors


def test_unknown_model_is_a_usage_error(tmp_path, digits_root):
    result = invoke(
        [
            "train",
            "--preset",
            "digits-demo",
            "--model",
            "zocli-tiyn",
            "--data-root",
            digits_root,
            "--out",
            tmp_path / "run",
        ]
    )
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert _says(result.stderr, "did you mean 'zocli-tiny'")


def test_missing_weights_is_a_runtime_error_naming_the_fix(tmp_path, digits_root, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    result = invoke(
        [
            "train",
            "--benchmark",
            "digits",
            "--inc",
            "2",
            "--pretrained",
            "openai",
            "--data-root",
            digits_root,
            "--out",
            tmp_path / "run",
        ]
    )
    assert result.exit_code == 1, result.output
    _no_traceback(result)
    assert _says(result.stderr, "zocli prepare --weights")


def test_corrupt_checkpoint_in_eval_is_a_runtime_error(trained, digits_root, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    task_file = copy / "checkpoints" / "task_01.safetensors"
    task_file.write_bytes(task_file.read_bytes()[:-10])
    result = invoke(["eval", copy, "--json", "--data-root", digits_root])
    assert result.exit_code == 1, result.output
    _no_traceback(result)
    assert _says(result.stderr, "task_01.safetensors")
    assert result.stdout == ""


def test_bad_device_name_is_a_usage_error(tmp_path, digits_root):
    result = invoke(
        ["train", "--preset", "digits-demo", "--device", "gpu", "--data-root", digits_root, "--out", tmp_path / "run"]
    )
    _no_traceback(result)
    assert result.exit_code == 2


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, digits_root):
    result = invoke(
        ["train", "--preset", "digits-demo", "--device", "cuda", "--data-root", digits_root, "--out", tmp_path / "run"]
    )
    _no_traceback(result)
    assert result.exit_code in (1, 2)
    assert _says(result.stderr, "CUDA")


@pytest.mark.parametrize("command", ["train", "sweep", "eval", "prepare", "memory", "probe-variance"])
def test_help_reads_whole_at_80_columns(command):
    # Found: choice lists broken mid-word (`test|bed`, `rando|m-search`) and defaults cut with "…".
    from zocli.config import OPTIONS

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    words = set(re.split(r"[\s│|,.\[\]()`]+", result.output))
    for option in OPTIONS.values():
        if f"{option.spelling} " in result.output or f"{option.spelling}/" in result.output:
            assert set(option.choices) <= words, (option.spelling, set(option.choices) - words)


@pytest.mark.parametrize(("rank", "says"), [("0", True), ("1", False)])
def test_a_stopped_run_is_announced_by_rank_0_alone(monkeypatch, tmp_path, rank, says):
    """Under --nproc every rank stops at the same commit and exits 130; only rank 0 prints the resume line."""
    from zocli.cli import train as cli_train
    from zocli.run.rundir import Interrupted

    def stopped(*_args, **_kwargs):
        raise Interrupted(tmp_path / "run")

    monkeypatch.setattr(cli_train, "_train_or_resume", stopped)
    monkeypatch.setenv("RANK", rank)
    result = invoke(["train", "--preset", "demo", "--out", tmp_path / "run"])
    assert result.exit_code == 130
    assert ("stopped; resume with: zocli train --resume" in result.output) == says
