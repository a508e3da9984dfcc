"""zocli.run.checkpoint + rundir: save → load gives identical logits; every kind of damage is a CheckpointError."""

import hashlib
import json

import pytest
import torch
from conftest import tiny_config

from zocli.config import Config
from zocli.method.attach import build_model
from zocli.run.checkpoint import CheckpointError, load_task, read_manifest, save_task
from zocli.run.files import RunDirError
from zocli.run.rundir import RunDir

IDENTITY = {"zocli_version": "test", "config": {}}  # what makes a directory a zocli run


def _randomize_adapters_(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _logits(model):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, model.image_size, model.image_size, generator=gen)
    tokens = model.tokenizer([f"a bad photo of a {n}." for n in ("zero", "one", "two")])
    model.eval()
    with torch.no_grad():
        return model.logits(model.encode("vision", images), model.encode("language", tokens))


@pytest.fixture
def saved(tmp_path):
    """A run with task 0 committed from a tiny model with trained-looking (random, non-zero) adapters."""
    cfg = tiny_config()
    model = build_model(cfg, "cpu")
    _randomize_adapters_(model, seed=7)
    run = RunDir.create(tmp_path / "run", IDENTITY)
    path = save_task(run, 0, model.units.state_dict(), {"config": cfg.as_dict(), "classes_seen": 2})
    return run, path, model, cfg


def _expected(model):
    return dict(model.units.state_dict().items())


def _recommit(run, path, data: bytes) -> None:
    """Write `data` as the task file and make the manifest agree with it (damage the hash cannot see)."""
    path.write_bytes(data)
    manifest = json.loads(run.manifest.read_text())
    manifest["files"]["0"]["sha256"] = hashlib.sha256(data).hexdigest()
    run.manifest.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------- round trip


def test_save_then_load_into_a_fresh_model_gives_identical_logits(saved):
    run, _path, model, _cfg = saved
    # A fresh model with another seed has other adapter inits. A checkpoint holds adapters only (DESIGN §8),
    # so the frozen backbone must be the same one: copy it, as loading the same pretrained weights would.
    fresh = build_model(tiny_config(seed=1), "cpu")
    fresh.clip.load_state_dict(model.clip.state_dict())
    assert not torch.allclose(_logits(fresh), _logits(model))
    tensors, _meta = load_task(run, 0, expected=_expected(fresh))
    fresh.units.load_state_dict(tensors)
    assert torch.equal(_logits(fresh), _logits(model))
    state = model.units.state_dict()
    assert tensors.keys() == state.keys()
    assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_only_adapter_tensors_are_saved(saved):
    run, _path, model, _ = saved
    tensors, _ = load_task(run, 0)
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in model.adapter_parameters())


def test_metadata_carries_config_and_task(saved):
    run, _path, _model, cfg = saved
    _, meta = load_task(run, 0)
    assert Config(**meta["config"]) == cfg
    assert meta["task"] == 0
    assert meta["classes_seen"] == 2
    assert meta["zocli_format"] == 1 and isinstance(meta["zocli_version"], str)


def test_manifest_lists_the_file_with_its_sha256(saved):
    run, path, model, cfg = saved
    manifest = read_manifest(run)
    assert manifest["tasks_done"] == 1
    assert manifest["files"]["0"] == {
        "file": "task_00.safetensors",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert path == run.task_file(0) and path.parent == run.checkpoints
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["manifest.json", "task_00.safetensors"]
    save_task(run, 1, model.units.state_dict(), {"config": cfg.as_dict()})
    manifest = read_manifest(run)
    assert manifest["tasks_done"] == 2 and set(manifest["files"]) == {"0", "1"}
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "manifest.json",
        "task_00.safetensors",
        "task_01.safetensors",
    ]


# ---------------------------------------------------------------------------------------------- damage


def _assert_names_file(info, path) -> None:
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_bytes_are_caught_by_the_hash(saved):
    run, path, model, _ = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor: still parseable, only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)
    assert "sha256" in str(info.value)


def test_corrupt_header_is_caught_by_the_parser_too(saved):
    run, path, model, _ = saved
    data = path.read_bytes()
    _recommit(run, path, b"\xff" * 8 + data[8:])  # header length garbage, hash made to agree
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file(saved, keep):
    run, path, model, _ = saved
    data = path.read_bytes()[:keep]
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:  # the hash sees it
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)
    _recommit(run, path, data)
    with pytest.raises(CheckpointError) as info:  # and so does the parser
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)


def test_hash_mismatch_in_the_manifest(saved):
    run, path, _model, _ = saved
    manifest = json.loads(run.manifest.read_text())
    manifest["files"]["0"]["sha256"] = "0" * 64
    run.manifest.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0)
    _assert_names_file(info, path)


def test_missing_key(saved):
    run, path, model, cfg = saved
    state = model.units.state_dict()
    dropped = sorted(state)[0]
    del state[dropped]
    save_task(run, 0, state, {"config": cfg.as_dict()})
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)
    assert dropped in str(info.value)


def test_unexpected_key(saved):
    run, path, model, cfg = saved
    state = {**model.units.state_dict(), "vision.99.extra": torch.zeros(3)}
    save_task(run, 0, state, {"config": cfg.as_dict()})
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)


def test_wrong_shape(saved):
    run, path, model, cfg = saved
    state = model.units.state_dict()
    key = "vision.0.router"
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)
    save_task(run, 0, state, {"config": cfg.as_dict()})
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0, _expected(model))
    _assert_names_file(info, path)
    assert key in str(info.value)


def test_missing_file_and_uncommitted_task(saved):
    run, path, _model, _ = saved
    with pytest.raises(CheckpointError):
        load_task(run, 3)  # never committed
    path.unlink()
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0)
    _assert_names_file(info, path)


def test_unparseable_manifest_names_the_manifest(saved):
    run, _path, _model, _ = saved
    run.manifest.write_text("{not json")
    # RunDirError is also a one-line, exit-1 runtime error in the CLI; either type is acceptable here
    with pytest.raises((CheckpointError, RunDirError)) as info:
        load_task(run, 0)
    assert str(run.manifest) in str(info.value)


def test_malformed_manifest_entry_is_a_checkpoint_error(saved):
    run, _path, _model, _ = saved
    run.manifest.write_text(json.dumps({"tasks_done": 1, "files": {"0": {"file": "task_00.safetensors"}}}))
    with pytest.raises(CheckpointError) as info:
        load_task(run, 0)
    assert str(run.manifest) in str(info.value)


# ---------------------------------------------------------------------------------------------- run directory


def test_rundir_create_refuses_a_non_empty_directory(tmp_path):
    root = tmp_path / "run"
    run = RunDir.create(root, IDENTITY)
    run.log({"event": "a previous run"})
    run.release()
    with pytest.raises(RunDirError) as info:
        RunDir.create(root, IDENTITY)
    assert "--overwrite" in str(info.value)
    assert run.events() == [{"event": "a previous run"}]  # refused means untouched
    run = RunDir.create(root, {**IDENTITY, "zocli_version": "new"}, overwrite=True)  # replaces a previous run
    assert not run.metrics.exists() and run.saved()["zocli_version"] == "new"
    assert run.checkpoints.is_dir()


def test_overwrite_refuses_to_delete_a_directory_that_is_not_a_run(tmp_path):
    root = tmp_path / "my-project"
    root.mkdir()
    (root / "source.py").write_text("precious")
    with pytest.raises(RunDirError):
        RunDir.create(root, IDENTITY, overwrite=True)
    assert (root / "source.py").read_text() == "precious"


def test_rundir_create_accepts_new_or_empty_directories(tmp_path):
    assert RunDir.create(tmp_path / "new" / "nested", IDENTITY).checkpoints.is_dir()
    (tmp_path / "empty").mkdir()
    assert RunDir.create(tmp_path / "empty", IDENTITY).root == tmp_path / "empty"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError):
        RunDir.create(tmp_path / "file", IDENTITY)


def test_rundir_log_appends_json_lines(tmp_path):
    run = RunDir.create(tmp_path / "run", IDENTITY)
    run.log({"event": "a", "x": 1})
    run.log({"event": "b"})
    assert run.events() == [{"event": "a", "x": 1}, {"event": "b"}]
    assert run.events("b") == [{"event": "b"}]


# -------------------------------------------------------------------------------- what a manifest may point at


@pytest.mark.parametrize("name", ["/dev/zero", "../../../etc/passwd", "../config.json", "task_00.safetensors/.."])
def test_a_manifest_entry_outside_the_checkpoints_is_refused(saved, name):
    run, _path, _model, _ = saved
    manifest = json.loads(run.manifest.read_text())
    manifest["files"]["0"]["file"] = name
    run.manifest.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"not a task_NN\.safetensors"):
        load_task(run, 0)


def test_a_fifo_or_symlink_in_place_of_a_checkpoint_is_refused_without_blocking(saved, tmp_path):
    import os
    import signal

    run, path, _model, _ = saved
    path.unlink()
    os.mkfifo(path)
    signal.alarm(10)  # a FIFO opened for reading blocks until a writer comes: fail, do not hang
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_task(run, 0)
    finally:
        signal.alarm(0)
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"x")
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_task(run, 0)


def test_an_oversized_checkpoint_is_refused_before_it_is_read(saved):
    import os

    from zocli.run.checkpoint import MAX_CHECKPOINT_BYTES

    run, path, _model, _ = saved
    os.truncate(path, MAX_CHECKPOINT_BYTES + 1)  # sparse: no disk used, and never read
    with pytest.raises(CheckpointError, match="more than a checkpoint can be"):
        load_task(run, 0)


def test_the_tensors_come_from_the_bytes_that_were_hashed(saved, monkeypatch):
    # A file swapped between the hash check and the load must not be what gets loaded.
    from zocli.run import checkpoint

    run, path, model, _ = saved
    original = path.read_bytes()
    other = build_model(tiny_config(), "cpu")
    _randomize_adapters_(other, seed=99)
    swapped = checkpoint.save(other.units.state_dict(), metadata={"task": "0"})

    class SwapAfterHashing:  # another process replaces the file right after it was hashed
        @staticmethod
        def sha256(data):
            digest = hashlib.sha256(data)
            path.write_bytes(swapped)
            return digest

    monkeypatch.setattr(checkpoint, "hashlib", SwapAfterHashing)
    tensors, _ = load_task(run, 0, _expected(model))
    from safetensors.torch import load

    assert all(torch.equal(tensors[k], v) for k, v in load(original).items())
