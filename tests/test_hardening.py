"""Hostile and unlucky inputs end as one line and the right exit code (1 runtime, 2 usage), nothing written or
lost: model-config files, truncated or undecodable images, non-UTF-8 class folders, wandb online without a
network, run directories and paths as the shell passes them, finished runs on read-only disks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_errors import _fake_run, assert_one_line_error, invoke

TINY_JSON = Path(__file__).resolve().parent.parent / "zocli" / "model_configs" / "zocli-tiny.json"


@pytest.fixture
def cwd(tmp_path, monkeypatch, digits_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOCLI_DATA", raising=False)
    return tmp_path


def demo(data: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--preset", "digits-demo", "--data-root", str(data), "--max-steps", "1", "--out", str(out), *more]


def _tiny(**changes) -> dict:
    cfg = json.loads(TINY_JSON.read_text())
    for path, value in changes.items():
        table = cfg
        *parents, key = path.split(".")
        for parent in parents:
            table = table[parent]
        table[key] = value
    return cfg


MODEL_CASES = {
    "width-huge": (_tiny(**{"vision_cfg.width": 10**7}), "width must be an integer from 1 to 65536"),
    "layers-negative": (_tiny(**{"vision_cfg.layers": -3}), "layers must be an integer from 1"),
    "layers-zero": (_tiny(**{"text_cfg.layers": 0}), "text_cfg: layers must be an integer from 1"),
    "tower-not-object": (_tiny(vision_cfg=[1, 2]), "vision_cfg must be an object"),
    "patch-larger-than-image": (_tiny(**{"vision_cfg.patch_size": 64}), "patch_size 64 is larger than image_size 32"),
    "too-many-parameters": (
        _tiny(**{"vision_cfg.width": 60000, "vision_cfg.layers": 500}),
        "parameters",
    ),
    "deep-array": ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_hostile_model_config_is_refused_before_allocation(case, cwd, digits_root):
    content, needle = MODEL_CASES[case]
    path = cwd / "hostile.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert_one_line_error(invoke(demo(digits_root, cwd / "out", "--model", str(path))), 2, str(path), needle)
    assert not (cwd / "out").exists()


def _png(path: Path, size: int = 16) -> None:
    import numpy as np
    import PIL.Image

    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, classes=("ant", "bee")) -> Path:
    for c in classes:
        for split in ("train", "test"):
            for i in range(2):
                _png(root / split / c / f"{i}.png")
    return root


def test_a_truncated_png_is_caught_at_prepare(cwd):
    src = _folder(cwd / "src")
    bad = src / "train" / "bee" / "1.png"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header reads fine, the pixels do not
    args = ["prepare", "--benchmark", f"folder:{src}", "--data-root", str(cwd / "data"), "--json"]
    assert_one_line_error(invoke(args), 1, str(bad), "truncated")
    assert not any((cwd / "data").glob("folder-*/dataset_dict.json"))


def test_an_undecodable_image_in_an_hf_dataset_is_named_by_its_row(tmp_path):
    import io

    import PIL.Image
    from datasets import Dataset, Features, Image, Value

    from zocli.data import catalogue, sources

    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    cells = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}]
    ds = Dataset.from_dict(
        {"image": cells, "label": [0, 1]}, features=Features({"image": Image(decode=False), "label": Value("int64")})
    )
    bench = catalogue.from_record({"spec": "hf:x", "classes": ["a", "b"], "names": ["a", "b"]})
    with pytest.raises(sources.SourceError) as info:
        sources.normalize(ds, bench, "image", "label", None, tmp_path / "train.arrow")
    message = str(info.value)
    assert "row 1 of the train split" in message and "BytesIO" not in message and "\n" not in message


def test_a_class_folder_whose_name_is_not_utf8_is_refused(cwd):
    src = _folder(cwd / "src")
    os.rename(src / "train" / "bee", os.fsencode(src / "train") + b"/b\xffe")
    os.rename(src / "test" / "bee", os.fsencode(src / "test") + b"/b\xffe")
    args = ["prepare", "--benchmark", f"folder:{src}", "--data-root", str(cwd / "data"), "--json"]
    assert_one_line_error(invoke(args), 1, "not UTF-8", "rename it")


def test_wandb_online_without_a_network_is_one_line_and_quick(cwd, digits_root, monkeypatch):
    import time

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    began = time.monotonic()
    result = invoke(demo(digits_root, cwd / "out", "--report-to", "wandb"))
    assert_one_line_error(result, 1, "WANDB_MODE=online", "127.0.0.1:9", "unset WANDB_MODE")
    assert time.monotonic() - began < 10 and not (cwd / "out").exists()


def test_out_empty_is_refused_and_a_quoted_tilde_is_expanded(cwd, digits_root, monkeypatch):
    assert_one_line_error(invoke(demo(digits_root, Path(""))), 2, "--out '.'", "current directory")
    monkeypatch.setenv("HOME", str(cwd / "home"))
    (cwd / "home" / "busy").mkdir(parents=True)
    (cwd / "home" / "busy" / "notes.txt").write_text("mine\n")
    line = assert_one_line_error(invoke(demo(digits_root, "~/busy")), 1, str(cwd / "home" / "busy"))
    assert "~" not in line and not (cwd / "~").exists()


def test_a_relative_data_root_is_recorded_absolute(cwd, monkeypatch):
    monkeypatch.setenv("ZOCLI_DATA", "rel-data")
    args = ["train", "--preset", "digits-demo", "--benchmark", "cifar100", "--out", str(cwd / "out")]
    assert_one_line_error(invoke(args), 1, f"under {cwd / 'rel-data'}")


def test_overwrite_refuses_the_users_files_inside_the_tracker_folders(tmp_path):
    from zocli.run.files import RunDirError
    from zocli.run.rundir import RunDir

    run = _fake_run(tmp_path / "run")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    RunDir.check_available(run, overwrite=True)  # what the tracker wrote is the run's
    (run / "tensorboard" / "my-notes.txt").write_text("keep me\n")
    with pytest.raises(RunDirError, match=r"tensorboard/my-notes\.txt"):
        RunDir.check_available(run, overwrite=True)
    assert (run / "tensorboard" / "my-notes.txt").is_file()


def test_resume_of_a_finished_run_reports_it_without_the_lock(tmp_path, monkeypatch):
    """On a read-only filesystem the lock cannot be taken; a finished run needs none."""
    from zocli.run import files, lock

    source = tmp_path / "finished"
    _fake_run(source)
    summary = {
        "acc_matrix": [[50.0], [40.0, 60.0]],
        "task_sizes": [10, 10],
        "wall_seconds": 1.0,
        "peak_memory": {"bytes": 0},
    }
    (source / "summary.json").write_text(json.dumps(summary))

    def read_only(self, root):
        raise files.RunDirError(f"cannot lock run directory {root}: Read-only file system")

    monkeypatch.setattr(lock.RunLock, "__init__", read_only)
    result = invoke(["train", "--resume", str(source), "--json", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["acc_matrix"] == summary["acc_matrix"]


def test_a_prepared_copy_missing_a_whole_class_is_refused_unless_prepared_partial():
    from zocli.run.inputs import DataIncomplete, _check_complete

    counts = {"train": [5, 0, 5], "test": [1, 1, 1]}
    with pytest.raises(DataIncomplete, match="no train images of class\\(es\\) b"):
        _check_complete("/data/x", ["a", "b", "c"], counts, partial=False)
    _check_complete("/data/x", ["a", "b", "c"], counts, partial=True)  # --allow-partial: the user's choice


def test_the_run_and_the_copy_record_the_same_fingerprint(tmp_path):
    from zocli.data import catalogue, fingerprint, store

    copy = store.prepare(catalogue.get("digits"), tmp_path)
    recorded = fingerprint.read(copy)
    assert recorded["classes"] == list(catalogue.get("digits").classes) and recorded["partial"] is False
    assert recorded["files"] == fingerprint.files_hash(copy) and sum(recorded["counts"]["train"]) == 1437
    shutil.rmtree(copy / "test")
    assert fingerprint.files_hash(copy) != recorded["files"]
