"""A run verifies every input it reads again (zocli.run.inputs): class order, model config, prepared data,
weights. A change stops `eval` and `--resume` in one line (exit 1) with nothing written; the recorded
content stands in for a file that is gone; `--allow-changed-inputs` goes on and the run records it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_errors import assert_one_line_error, invoke

from zocli.resolve import resolve
from zocli.run.train import run

TINY = Path(__file__).resolve().parent.parent / "zocli"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One finished two-task run on digits that read an order file, a model JSON and a weights file."""
    from zocli.data import catalogue, store

    base = tmp_path_factory.mktemp("inputs")
    store.prepare(catalogue.get("digits"), base / "data")
    (base / "order.json").write_text(json.dumps(list(range(9, -1, -1))))
    shutil.copy(TINY / "model_configs" / "zocli-tiny.json", base / "tiny.json")
    shutil.copy(TINY / "weights" / "zocli-tiny-testbed.safetensors", base / "w.safetensors")
    flags = {
        "data_root": str(base / "data"),
        "max_steps": 1,
        "inc": 5,
        "eval_batch_size": 512,
        "class_order": str(base / "order.json"),
        "model": str(base / "tiny.json"),
        "pretrained": str(base / "w.safetensors"),
    }
    out = run(resolve(["digits-demo"], flags), base / "run").run_dir
    return base, out


@pytest.fixture
def unfinished(world, tmp_path):
    """A copy of the run without summary.json: `--resume` has something to do (write the summary)."""
    _, out = world
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "summary.json").unlink()
    return copy


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _changed(path: Path, text: str):
    """Replace a file's text for the test, restoring it afterwards."""
    saved = path.read_bytes()
    path.write_text(text)
    return saved


def _check_refused(run_dir: Path, *needles: str) -> None:
    before = _snapshot(run_dir)
    assert_one_line_error(invoke(["eval", str(run_dir)]), 1, *needles, "--allow-changed-inputs")
    assert_one_line_error(invoke(["train", "--resume", str(run_dir)]), 1, *needles)
    assert _snapshot(run_dir) == before  # nothing written, not even the lock file


@pytest.mark.parametrize("kind", ["class-order", "model-config", "weights"])
def test_a_changed_input_stops_eval_and_resume_in_one_line(kind, world, unfinished):
    base, _ = world
    path, needle = {
        "class-order": (base / "order.json", "position 0 = 9, now 0"),
        "model-config": (base / "tiny.json", "quick_gelu: true -> false"),
        "weights": (base / "w.safetensors", "sha256"),
    }[kind]
    text = path.read_bytes()
    try:
        if kind == "class-order":
            path.write_text(json.dumps(list(range(10))))
        elif kind == "model-config":
            path.write_text(path.read_text().replace('"quick_gelu": true', '"quick_gelu": false'))
        else:
            path.write_bytes(text[:-1] + bytes([text[-1] ^ 1]))
        _check_refused(unfinished, str(path), needle)
    finally:
        path.write_bytes(text)


def test_changed_prepared_data_stops_eval_and_resume(world, unfinished):
    base, _ = world
    info = base / "data" / "digits" / "train" / "dataset_info.json"
    text = info.read_bytes()
    try:
        info.write_bytes(text + b" ")
        _check_refused(unfinished, str(base / "data" / "digits"), "split files")
    finally:
        info.write_bytes(text)


def test_recorded_content_stands_in_for_files_that_are_gone(world, tmp_path):
    base, out = world
    reference = json.loads(invoke(["eval", str(out), "--json"]).stdout)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("order.json", "tiny.json"):
        shutil.move(base / name, moved / name)
    try:
        result = invoke(["eval", str(out), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["acc_matrix"] == reference["acc_matrix"]
    finally:
        for name in ("order.json", "tiny.json"):
            shutil.move(moved / name, base / name)


def test_allow_changed_inputs_goes_on_and_the_run_records_it(world, unfinished):
    base, _ = world
    order = base / "order.json"
    saved = _changed(order, json.dumps(list(range(10))))
    try:
        result = invoke(["eval", str(unfinished), "--json", "--allow-changed-inputs"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["changed_inputs"][0]["file"] == str(order)
        result = invoke(["train", "--resume", str(unfinished), "--allow-changed-inputs", "--json"])
        assert result.exit_code == 0, result.output
    finally:
        order.write_bytes(saved)
    events = [json.loads(line) for line in (unfinished / "metrics.jsonl").read_text().splitlines()]
    assert next(e for e in events if e["event"] == "inputs_changed")["changes"][0]["what"] == "the class order"


def test_allow_changed_inputs_is_refused_without_resume(world):
    base, _ = world
    assert_one_line_error(
        invoke(["train", "--preset", "digits-demo", "--allow-changed-inputs", "--out", str(base / "x")]),
        2,
        "--allow-changed-inputs applies to --resume",
    )


def test_a_folder_benchmark_reprepared_with_a_class_replaced_is_refused(tmp_path):
    """The issue's third case: the same spec, prepared again from a source whose class changed."""
    import numpy as np
    import PIL.Image

    src = tmp_path / "src"
    rng = np.random.default_rng(0)

    def make(classes):
        shutil.rmtree(src, ignore_errors=True)
        for c in classes:
            for split in ("train", "test"):
                (src / split / c).mkdir(parents=True)
                for i in range(3):
                    pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                    PIL.Image.fromarray(pixels).save(src / split / c / f"{i}.png")

    from zocli.data import userdata

    make(["ant", "bee"])
    userdata.prepare(f"folder:{src}", tmp_path / "data")
    flags = {"benchmark": f"folder:{src}", "data_root": str(tmp_path / "data"), "inc": 1, "max_steps": 1}
    out = run(resolve(["digits-demo"], flags), tmp_path / "run").run_dir
    make(["ant", "cat"])
    userdata.prepare(f"folder:{src}", tmp_path / "data", overwrite=True)
    copy = f"folder-{src.name}"
    assert_one_line_error(invoke(["eval", str(out)]), 1, copy, "without bee", "with cat")
