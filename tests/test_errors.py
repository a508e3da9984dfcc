"""Every bad input ends in one line on stderr and an exit code that means something (DESIGN §9).

Usage errors exit 2 and say how to fix (with a close match where there is one); runtime errors exit 1;
no traceback unless `--debug`. Driven through Typer's CliRunner on `zocli.cli.app`, whose result keeps
stdout and stderr apart (click 8.2+). COLUMNS=200 keeps rich, which wraps to the
console width (80 when not on a terminal), from splitting a line; that wrapping outside the
test runner is checked on its own below.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from zocli.cli import app

RUNNER = CliRunner(env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def invoke(args: list[str]):
    return RUNNER.invoke(app, args, prog_name="zocli")


def assert_one_line_error(result, code: int | tuple[int, ...], *needles: str) -> str:
    """Exit `code` (or one of them), exactly one non-empty stderr line containing every needle, nothing on stdout."""
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )  # would be a traceback
    assert result.exit_code in (code if isinstance(code, tuple) else (code,)), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    """Two finished two-task runs (2 steps per task) that differ only in the adapter: moe and lora."""
    from zocli.resolve import resolve
    from zocli.run.train import run

    base = tmp_path_factory.mktemp("error-runs")
    flags = {"data_root": str(digits_root), "max_steps": 2, "inc": 5, "eval_batch_size": 512}
    moe = run(resolve(["digits-demo"], flags), base / "moe").run_dir
    lora = run(resolve(["digits-demo"], {**flags, "adapter": "lora"}), base / "lora").run_dir
    return moe, lora


@pytest.fixture
def paths(tmp_path, digits_root, runs, monkeypatch):
    """Placeholders for the table below; an empty Hugging Face cache; cwd in tmp (no stray runs/)."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("ZOCLI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "empty-root").mkdir()
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("hello\n")
    (tmp_path / "typo.toml").write_text('# a user preset with a typo\nbench = "digits"\n')
    return {"tmp": str(tmp_path), "data": str(digits_root), "run": str(runs[0])}


DEMO = ["train", "--preset", "digits-demo", "--data-root", "{data}", "--max-steps", "1", "--out", "{tmp}/out"]

# (id, argv with {placeholders}, exit code, substrings of the one stderr line)
CASES = [
    (
        "unknown-benchmark",
        ["train", "--benchmark", "cifar10", "--inc", "10"],
        2,
        ["unknown benchmark 'cifar10'", "did you mean 'cifar100'"],
    ),
    ("unknown-preset", ["train", "--preset", "dmeo"], 2, ["unknown preset 'dmeo'", "did you mean 'demo'"]),
    (
        "unknown-preset-key",
        ["train", "--preset", "{tmp}/typo.toml"],
        2,
        ["unknown key 'bench'", "typo.toml", "did you mean 'benchmark'"],
    ),
    ("missing-preset-file", ["train", "--preset", "{tmp}/nope.toml"], 2, ["nope.toml", "does not exist"]),
    ("inc-does-not-divide", DEMO + ["--inc", "3"], 2, ["--inc 3 does not divide", "fit: 1, 7"]),
    ("base-too-large", DEMO + ["--base", "11"], 2, ["--base 11", "10 classes"]),
    ("batch-size-0", DEMO + ["--batch-size", "0"], 2, ["--batch-size must be a positive integer"]),
    ("epochs-0", DEMO + ["--epochs", "0"], 2, ["--epochs must be a positive integer"]),
    ("eps-0", DEMO + ["--eps", "0"], 2, ["--eps must be > 0"]),
    ("lr-negative", DEMO + ["--lr", "-1"], 2, ["--lr must be > 0"]),
    ("adapter-unknown", DEMO + ["--adapter", "moee"], 2, ["--adapter must be one of moe, lora"]),
    ("layers-without-zo", DEMO + ["--layers", "hop-odd"], 2, ["--layers hop-odd", "add --vision zo"]),
    ("mozo-without-zo", DEMO + ["--mozo"], 2, ["--mozo", "add --vision zo"]),
    ("unknown-model", DEMO + ["--model", "ViT-B-61"], 2, ["unknown model 'ViT-B-61'", "did you mean 'ViT-B-16'"]),
    ("unwritable-out", DEMO[:-1] + ["{tmp}/a-file/sub"], 1, ["a-file/sub"]),
    (
        "data-not-prepared",
        [
            "train",
            "--preset",
            "digits-demo",
            "--benchmark",
            "cifar100",
            "--inc",
            "10",
            "--data-root",
            "{tmp}/empty-root",
            "--out",
            "{tmp}/out",
        ],
        1,
        ["benchmark cifar100 is not prepared", "zocli prepare --benchmark cifar100"],
    ),
    (
        "weights-offline",
        DEMO + ["--model", "ViT-B-16", "--pretrained", "openai"],
        1,
        ["not in the local Hugging Face cache", "zocli prepare --weights"],
    ),
    ("weights-file-missing", DEMO + ["--pretrained", "{tmp}/nope.safetensors"], 1, ["nope.safetensors does not exist"]),
    ("eval-not-a-run", ["eval", "{tmp}/not-a-run"], 1, ["not-a-run is not a zocli run directory"]),
    ("eval-missing-path", ["eval", "{tmp}/missing"], 1, ["missing"]),
    ("eval-glob-matches-nothing", ["eval", "{tmp}/nomatch-*"], 2, ["no run directory matches"]),
    ("eval-task-out-of-range", ["eval", "{run}", "--task", "7"], 2, ["--task 7 is out of range", "0..1"]),
    (
        "overwrite-something-else",
        DEMO + ["--out", "{tmp}/not-a-run", "--overwrite"],
        1,
        ["--overwrite only replaces a zocli run directory"],
    ),
    (
        "out-not-empty",
        ["train", "--preset", "digits-demo", "--data-root", "{data}", "--out", "{run}"],
        1,
        ["is not empty", "--resume", "--overwrite"],
    ),
    ("resume-changes-a-flag", ["train", "--resume", "{run}", "--lr", "0.5"], 2, ["--lr cannot change"]),
    ("resume-changes-out", ["train", "--resume", "{run}", "--out", "{tmp}/x"], 2, ["cannot change"]),
    ("resume-not-a-run", ["train", "--resume", "{tmp}/not-a-run"], 1, ["not a zocli run directory"]),
    ("prepare-nothing", ["prepare"], 2, ["--benchmark", "--weights"]),
    (
        "prepare-digits-source",
        ["prepare", "--benchmark", "digits", "--source", "{tmp}", "--data-root", "{tmp}/prep"],
        1,
        ["--source does not apply"],
    ),
    ("presets-show-unknown", ["presets", "show", "nope"], 2, ["unknown preset 'nope'"]),
    (
        "probe-precision-unknown",
        ["probe-variance", "--preset", "digits-demo", "--precision", "fp32,fp16"],
        2,
        ["--precision takes a comma list of fp32, tf32, bf16"],
    ),
    (
        "memory-unknown-config",
        ["memory", "--preset", "digits-demo", "--configs", "fo,bogus"],
        2,
        ["unknown memory config 'bogus'"],
    ),
]


@pytest.mark.parametrize(("argv", "code", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_an_exit_code(argv, code, needles, paths):
    args = [a.format(**paths) for a in argv]
    began = time.perf_counter()
    result = invoke(args)
    seconds = time.perf_counter() - began
    assert_one_line_error(result, code, *[n.format(**paths) for n in needles])
    if "openai" in args:
        assert seconds < 10, f"weights check took {seconds:.1f} s: it must fail fast offline"
    assert not (Path(paths["tmp"]) / "runs").exists()  # nothing written at the default location


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        pytest.param(
            DEMO + ["--device", "cuda"], 1, "CUDA is not available", id="train-cuda-without-cuda", marks=NO_CUDA
        ),
        pytest.param(
            ["memory", "--preset", "digits-demo", "--device", "cuda"],
            1,
            "CUDA is not available",
            id="memory-cuda-without-cuda",
            marks=NO_CUDA,
        ),
        pytest.param(DEMO + ["--device", "tpu"], 2, "--device must be", id="device-unknown"),
    ],
)
def test_bad_device_is_one_line(argv, code, needle, paths):
    # Found as tracebacks (a bare RuntimeError from resolve_device / torch.device); fixed in the working tree.
    assert_one_line_error(invoke([a.format(**paths) for a in argv]), code, needle)


def test_infinite_learning_rate_is_a_usage_error(paths):
    result = invoke([a.format(**paths) for a in DEMO + ["--lr", "inf"]])
    assert_one_line_error(result, 2, "--lr")


def test_click_level_bad_value_exits_2_without_traceback(paths):
    # Values Click itself rejects (not an int, unknown option) exit 2 through Typer's usage panel.
    for args, needle in ((DEMO + ["--batch-size", "abc"], "--batch-size"), (DEMO + ["--lrr", "1"], "--lr")):
        result = invoke([a.format(**paths) for a in args])
        assert result.exit_code == 2
        assert isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output and needle in result.stderr


def _zocli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A real `python -m zocli` process, stderr captured through a pipe (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "zocli", *args],
        cwd=cwd,
        env={**env, "HF_HUB_OFFLINE": "1"},
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


HEAVY = ("torch", "open_clip", "datasets")
# Runs the CLI, then reports which heavy libraries the process imported on the way to its error.
IMPORT_PROBE = (
    "import sys\nfrom zocli.cli import app\ntry:\n    app(sys.argv[1:], prog_name='zocli')\n"
    f"finally:\n    print('imported:', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
)
NO_GPU_DRIVER = pytest.mark.skipif(
    any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/kfd", "/proc/driver/nvidia")),
    reason="a GPU driver is present: torch decides",
)


def _fake_run(root: Path) -> Path:
    """A run directory with two committed tasks, as far as files without tensors go."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.json").write_text(
        json.dumps(
            {
                "zocli_version": "0.1.0",
                "config": {"benchmark": "digits", "data_root": str(root), "device": "cpu", "model": "zocli-tiny"},
            }
        )
    )
    (root / "checkpoints" / "manifest.json").write_text(json.dumps({"tasks_done": 2, "files": {}}))
    return root


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--preset", "digits-demo", "--out", "{run}"], 1, "is not empty"),
        pytest.param(
            ["train", "--preset", "digits-demo", "--device", "cuda", "--out", "{tmp}/new"],
            1,
            "CUDA is not available",
            marks=NO_GPU_DRIVER,
        ),
        pytest.param(
            ["memory", "--preset", "digits-demo", "--device", "cuda"], 1, "CUDA is not available", marks=NO_GPU_DRIVER
        ),
        (["train", "--resume", "{tmp}/missing"], 1, "does not exist"),
        (["eval", "{tmp}/missing"], 1, "does not exist"),
        (["eval", "{run}", "{tmp}/missing"], 1, "does not exist"),
        (["probe-variance", "--run", "{tmp}/missing"], 1, "does not exist"),
        (["eval", "{run}", "--task", "5"], 2, "--task 5 is out of range"),
        (["train", "--benchmark", "cifar100", "--data-root", "{tmp}", "--out", "{tmp}/new"], 1, "not prepared"),
    ],
    ids=[
        "out-in-use",
        "train-cuda",
        "memory-cuda",
        "resume-missing",
        "eval-missing",
        "compare-missing",
        "probe-missing",
        "task-out-of-range",
        "data-not-prepared",
    ],
)
def test_common_runtime_errors_come_before_the_heavy_imports(argv, code, needle, tmp_path):
    # Found: these took 10-15 s (torch and open_clip imported first) while usage errors took < 1 s.
    places = {"tmp": str(tmp_path), "run": str(_fake_run(tmp_path / "run"))}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *[a.format(**places) for a in argv]],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 2 and needle in lines[0], proc.stderr
    assert lines[1] == "imported:", f"{lines[1]} before reporting: {lines[0]}"


def test_data_not_prepared_mentions_the_weights_when_they_would_be_needed(paths):
    args = ["train", "--benchmark", "cifar100", "--data-root", paths["tmp"], "--out", paths["tmp"] + "/new"]
    line = assert_one_line_error(invoke(args), 1, "not prepared", "--weights --model ViT-B-16 --pretrained openai")
    assert "zocli prepare --benchmark cifar100" in line
    line = assert_one_line_error(invoke([*args, "--pretrained", "none"]), 1, "not prepared")
    assert "--weights" not in line  # a random init needs no download


def test_parse_level_bad_value_is_typer_usage_panel(paths):
    # Values Typer itself cannot parse get Typer's standard usage panel (usage line + boxed message):
    # accepted as the one place a usage error spans several lines. Still exit 2, no traceback.
    result = invoke([a.format(**paths) for a in DEMO + ["--batch-size", "abc"]])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.stdout == ""
    assert "--batch-size" in result.stderr


def test_one_line_also_when_stderr_is_a_file(tmp_path):
    # Without COLUMNS and off a terminal rich wraps at 80 columns: this message (~120 characters) came out
    # as two lines in a pipeline's log until `err` got soft_wrap=True.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = _zocli(["train", "--preset", "digits-demo", "--inc", "3", "--out", str(tmp_path / "out")], tmp_path, env)
    assert proc.returncode == 2
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _zocli(["--debug", "train", "--preset", "dmeo"], tmp_path, {**os.environ, "COLUMNS": "200"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ConfigError" in proc.stderr and "dmeo" in proc.stderr


def test_without_debug_the_same_error_has_no_traceback_in_a_real_process(tmp_path):
    proc = _zocli(["train", "--preset", "dmeo"], tmp_path, {**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown preset 'dmeo' (did you mean 'demo'?)"
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def damaged(runs, tmp_path):
    """A private copy of the moe run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(runs[0], copy)
    return copy


def _rehash(run: Path, task: int) -> None:
    """Make the manifest agree with the file now there (damage the hash check cannot see)."""
    manifest_path = run / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["files"][str(task)]
    entry["sha256"] = hashlib.sha256((run / "checkpoints" / entry["file"]).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_the_undamaged_copy_evaluates(damaged):
    result = invoke(["eval", str(damaged), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["acc_matrix"]) == 2


def test_flipped_bytes_fail_the_manifest_hash(damaged):
    path = damaged / "checkpoints" / "task_00.safetensors"
    data = bytearray(path.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])  # inside the tensor data
    path.write_bytes(bytes(data))
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "sha256 does not match")


def test_truncated_checkpoint(damaged):
    path = damaged / "checkpoints" / "task_00.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path))


def test_truncated_checkpoint_with_matching_hash_is_unreadable(damaged):
    path = damaged / "checkpoints" / "task_00.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    _rehash(damaged, 0)
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "not a readable safetensors file")


def test_checkpoint_from_a_lora_run_in_a_moe_run(damaged, runs):
    path = damaged / "checkpoints" / "task_01.safetensors"
    shutil.copyfile(runs[1] / "checkpoints" / "task_01.safetensors", path)
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "sha256")
    _rehash(damaged, 1)  # even when the manifest is made to agree, the keys give it away
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "keys do not match the model")


def test_checkpoint_trained_with_another_model_config(damaged):
    # Same keys and shapes, but its metadata says another prompt: strict restore compares the model config.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = damaged / "checkpoints" / "task_01.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    config = json.loads(meta["config"])
    meta["config"] = json.dumps({**config, "prompt": "a photo of a {}."})
    save_file(load_file(str(path)), str(path), metadata=meta)
    _rehash(damaged, 1)
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "different prompt")


def test_missing_checkpoint_file(damaged):
    path = damaged / "checkpoints" / "task_01.safetensors"
    path.unlink()
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path), "cannot read")


def test_corrupt_manifest(damaged):
    path = damaged / "checkpoints" / "manifest.json"
    path.write_text("{ not json")
    assert_one_line_error(invoke(["eval", str(damaged)]), 1, str(path))


# ---------------------------------------------------------------------------------------------- hostile inputs


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height: PIL refuses it as a decompression bomb before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def hostile(paths, runs, tmp_path, digits_root):
    """Bad files for the table below, plus a copy of the moe run and of the data to damage."""
    tmp = Path(paths["tmp"])
    (tmp / "latin1.toml").write_bytes(b"# caf\xe9\nseed = 1\n")
    (tmp / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for split in ("train", "test"):
        (tmp / "bomb" / split / "apple").mkdir(parents=True)
        (tmp / "bomb" / split / "apple" / "a.png").write_bytes(_png_header(20000, 20000))
    tiny = tmp / "tiny" / "tiny-imagenet-200"
    (tiny / "train" / "n01443537" / "images").mkdir(parents=True)
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "val" / "val_annotations.txt").write_text("val_0.JPEG\n")
    run = tmp / "damaged"
    shutil.copytree(runs[0], run)
    bad_data = tmp / "bad-data"
    shutil.copytree(digits_root, bad_data)
    arrow = sorted((bad_data / "digits" / "test").glob("*.arrow"))[0]
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)  # zeros over encoded images
    arrow.write_bytes(bytes(data))
    return {**paths, "damaged": str(run), "bad_data": str(bad_data)}


def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _edit_metadata(path: Path, **meta) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        old = handle.metadata()
    save_file(load_file(str(path)), str(path), metadata={**old, **meta})


DAMAGE = {  # how to damage the copied run before the command runs
    "config-not-zocli": lambda run: (run / "config.json").write_text('{"architectures": ["BertModel"]}'),
    "config-unknown-key": lambda run: (
        (run / "summary.json").unlink(),
        _edit_json(run / "config.json", lambda c: {**c, "config": {**c["config"], "lrr": 1}}),
    ),
    "summary-damaged": lambda run: _edit_json(run / "summary.json", lambda s: {"acc_matrix": "x"}),
    "commit-record-damaged": lambda run: (
        (run / "summary.json").unlink(),
        _edit_json(run / "checkpoints" / "manifest.json", lambda m: {**m, "rng": "not base64"}),
    ),
    "state-damaged": lambda run: (
        (run / "summary.json").unlink(),
        shutil.copyfile(run / "checkpoints" / "task_01.safetensors", run / "checkpoints" / "resume.safetensors"),
        _edit_metadata(run / "checkpoints" / "resume.safetensors", task='"two"'),
    ),
    "metadata-config-damaged": lambda run: (
        _edit_metadata(run / "checkpoints" / "task_00.safetensors", config="[]"),
        _rehash(run, 0),
    ),
    "metadata-config-unknown-benchmark": lambda run: (
        _edit_metadata(
            run / "checkpoints" / "task_00.safetensors",
            config=json.dumps({**json.loads((run / "config.json").read_text())["config"], "benchmark": "nope"}),
        ),
        _rehash(run, 0),
    ),
}

# (id, argv, exit code, substrings of the one stderr line, damage to the copied run)
HOSTILE = [
    ("prompt-stray-brace", DEMO + ["--prompt", "{}{"], 2, ["--prompt must hold exactly one {}"], None),
    ("prompt-two-slots", DEMO + ["--prompt", "a {} of {}"], 2, ["--prompt must hold exactly one {}"], None),
    ("seed-too-large", DEMO + ["--seed", "99999999999999999999999"], 2, ["--seed must be between"], None),
    ("zo-chunk-too-large", DEMO + ["--zo-chunk", str(10**20)], 2, ["--zo-chunk must be at most"], None),
    ("eval-batch-2-63", DEMO + ["--eval-batch-size", str(2**63)], 2, ["--eval-batch-size must be at most"], None),
    ("workers-negative", DEMO + ["--workers", "-1"], 2, ["--workers must be >= 0"], None),
    ("preset-not-utf8", ["train", "--preset", "{tmp}/latin1.toml"], 2, ["latin1.toml is not valid TOML"], None),
    ("memory-device-banana", ["memory", "--preset", "demo", "--device", "banana"], 2, ["--device must be meta"], None),
    (
        "probe-task-99",
        ["probe-variance", "--preset", "demo", "--data-root", "{data}", "--task", "99"],
        2,
        ["--task 99 is out of range"],
        None,
    ),
    ("eval-plot-xyz", ["eval", "{run}", "--plot", "{tmp}/heat.xyz"], 2, ["unknown image format '.xyz'"], None),
    ("pretrained-passwd", DEMO + ["--pretrained", "/etc/passwd"], 1, ["--pretrained /etc/passwd: not loadable"], None),
    ("pretrained-garbage", DEMO + ["--pretrained", "{tmp}/garbage.safetensors"], 1, ["not loadable weights"], None),
    ("data-root-is-a-file", DEMO[:4] + ["{tmp}/a-file"] + DEMO[5:], 1, ["--data-root", "is not a directory"], None),
    (
        "prepare-decompression-bomb",
        ["prepare", "--benchmark", "cifar100", "--source", "{tmp}/bomb", "--data-root", "{tmp}/prep", "--json"],
        1,
        ["a.png", "exceeds limit"],
        None,
    ),
    (
        "prepare-one-column-annotations",
        ["prepare", "--benchmark", "tinyimg", "--source", "{tmp}/tiny", "--data-root", "{tmp}/prep", "--json"],
        1,
        ["val_annotations.txt: line 1"],
        None,
    ),
    (
        "corrupt-prepared-images",
        ["eval", "{damaged}", "--data-root", "{bad_data}"],
        1,
        ["prepared data is damaged", "--overwrite"],
        None,
    ),
    *[
        (f"run-{name}", [cmd, "{damaged}"] if cmd == "eval" else ["train", "--resume", "{damaged}"], 1, [needle], name)
        for name, cmd, needle in (
            ("config-not-zocli", "eval", "not written by zocli"),
            ("config-unknown-key", "resume", "saved config is not valid"),
            ("summary-damaged", "resume", "summary.json: damaged"),
            ("commit-record-damaged", "resume", "damaged commit record"),
            ("state-damaged", "resume", "not a zocli training state"),
            ("metadata-config-damaged", "eval", "holds no valid config"),
            ("metadata-config-unknown-benchmark", "eval", "holds no valid config"),
        )
    ],
]


@pytest.mark.parametrize(("argv", "code", "needles", "damage"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_one_line_and_an_exit_code(argv, code, needles, damage, hostile):
    if damage:
        DAMAGE[damage](Path(hostile["damaged"]))
    fill = lambda text: functools.reduce(lambda t, kv: t.replace(f"{{{kv[0]}}}", kv[1]), hostile.items(), text)  # noqa: E731
    line = assert_one_line_error(invoke([fill(a) for a in argv]), code, *needles)
    assert "internal error" not in line


@pytest.mark.parametrize(("code", "when"), [(errno.ENOSPC, "task"), (errno.EIO, "task"), (errno.EROFS, "config")])
def test_disk_errors_are_one_line(paths, monkeypatch, code, when):
    from zocli.run import files

    write = files.atomic_write

    def failing(path, data):
        if path.name.startswith(when):
            raise OSError(code, os.strerror(code), str(path))
        write(path, data)

    monkeypatch.setattr(files, "atomic_write", failing)
    args = [a.format(**paths) for a in DEMO + ["--inc", "5", "--json"]]
    result = invoke(args)
    # progress lines (the banner, zero-shot) may come first, even with --json; the error is one line, the last
    progress = ("run ", "protocol: ", "weights sha256 ", "zero-shot ", "task ", "note: ")
    kept = "\n".join(line for line in result.stderr.splitlines() if line.strip() and not line.startswith(progress))
    errors_only = SimpleNamespace(
        exception=result.exception, exit_code=result.exit_code, stderr=kept, output=kept, stdout=result.stdout
    )
    assert_one_line_error(errors_only, 1, os.strerror(code))


# What the CLI handles itself rather than reports as an error: a requested stop (exit 130, resumable).
NOT_REPORTED = {"zocli.run.rundir.Interrupted"}


def _exception_classes() -> dict[str, type]:
    import importlib
    import inspect
    import pkgutil

    import zocli

    found = {}
    for module in pkgutil.walk_packages(zocli.__path__, "zocli."):
        loaded = importlib.import_module(module.name)
        for cls in vars(loaded).values():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == loaded.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_reported_exception_is_a_zocli_error():
    """The CLI maps errors by type (ZocliError.exit_code): a class outside that tree would be reported
    as an internal error."""
    from zocli.errors import ZocliError

    classes = _exception_classes()
    assert set(classes) >= NOT_REPORTED  # the exemption names a class that exists
    outside = [name for name, cls in classes.items() if name not in NOT_REPORTED and not issubclass(cls, ZocliError)]
    assert not outside, f"not ZocliErrors: {outside}"


def test_usage_errors_exit_2_and_runtime_errors_exit_1():
    from zocli.cli._shared import classify
    from zocli.errors import UsageError

    for name, cls in _exception_classes().items():
        if name in NOT_REPORTED or cls.__init__ is not Exception.__init__:
            continue
        assert classify(cls("what went wrong")) == (2 if issubclass(cls, UsageError) else 1, "what went wrong"), name
