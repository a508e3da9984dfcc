"""zocli.run.tracking: a tiny run reports to TensorBoard and W&B (offline), both holding metrics.jsonl's scalars."""

import glob
import json
import struct
from pathlib import Path

import pytest
from conftest import tiny_config

from zocli.config import ConfigError
from zocli.resolve import Resolved
from zocli.run.tracking import TrackingUnavailable, check_available, scalars

STEPS = 4  # per task, a record every 2 steps


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, digits_root):
    pytest.importorskip("tensorboard")
    from zocli.run.train import run

    trackers = "tensorboard,wandb" if _installed("wandb") else "tensorboard"
    cfg = tiny_config(
        inc=5, epochs=1, max_steps=STEPS, warmup_steps=1, data_root=str(digits_root), report_to=trackers, log_every=2
    )
    root = tmp_path_factory.mktemp("tracked") / "run"
    run(Resolved(cfg), root)
    return root


def _installed(name):
    try:
        check_available((name,))
    except TrackingUnavailable:
        return False
    return True


def expected(root):
    """What the trackers must hold, from metrics.jsonl: {(name, global step): value}."""
    events = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    offsets = [0, STEPS, 2 * STEPS]
    return {
        (name, step): value
        for event in events
        if (found := scalars(event, offsets))
        for step, values in [found]
        for name, value in values.items()
    }


def test_metrics_jsonl_gains_the_per_step_records(tracked_run):
    records = [json.loads(line) for line in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train_step"]
    assert [(r["task"], r["step"]) for r in steps] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert all(r["lr"] > 0 and r["images_per_second"] > 0 and r["zo_lr"] is None for r in steps)  # FO: no ZO
    assert all("avg" in r for r in records if r["event"] == "eval")


def test_tensorboard_event_files_hold_the_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tracked_run / "tensorboard"))
    board.Reload()
    found = {(tag, e.step): e.value for tag in board.Tags()["scalars"] for e in board.Scalars(tag)}
    want = expected(tracked_run)
    assert {"train/loss", "train/lr", "train/images_per_second", "task/avg", "task/acc_T1"} <= {t for t, _ in want}
    assert found.keys() == want.keys()
    assert all(found[key] == pytest.approx(value, rel=1e-6) for key, value in want.items())


def test_wandb_offline_run_holds_the_same_scalars(tracked_run):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(tracked_run / "wandb" / "offline-run-*" / "run-*.wandb"))
    found, config = {}, None
    for blob in _records(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            found.update({(k, items["_step"]): v for k, v in items.items() if not k.startswith("_")})
        elif record.WhichOneof("record_type") == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    want = expected(tracked_run)
    assert found.keys() == want.keys()
    assert all(found[key] == pytest.approx(value, rel=1e-6) for key, value in want.items())
    assert config["inc"] == 5 and config["report_to"] == "tensorboard,wandb"  # the config as hyper-parameters


def _records(data: bytes):
    """The records of a .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks have a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


def test_unknown_tracker_is_a_usage_error():
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        tiny_config(report_to="wandbb")
    assert tiny_config(report_to="tensorboard").log_interval == 50 and tiny_config().log_interval == 0


def test_tracker_output_belongs_to_the_run(tracked_run):
    from zocli.run.rundir import foreign_files

    assert (tracked_run / "tensorboard").is_dir() and foreign_files(tracked_run) == []  # --overwrite may replace it
