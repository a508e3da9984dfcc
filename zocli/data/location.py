"""Where a benchmark's prepared copy lives, the record beside a user's copy, and the benchmark a config
names in its class order: what every command that reads prepared data needs, without torch or datasets."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from zocli.config import Config, ConfigError
from zocli.data import catalogue
from zocli.data.catalogue import Benchmark, canonical_name, is_user, storage_name
from zocli.errors import ZocliError

RECORD = "zocli_benchmark.json"  # beside a prepared folder:/hf: copy: its spec, classes and prompt names


class NotReady(ZocliError, RuntimeError):
    """A runtime precondition fails (no CUDA, data not prepared): one line, exit 1."""


def dataset_dir(data_root: Path | str, benchmark: str) -> Path:
    """Where the prepared copy of `benchmark` lives under `data_root`."""
    return Path(data_root).expanduser() / storage_name(benchmark)


def prepare_command(benchmark: str, data_root: Path | str) -> str:
    name, root = shlex.quote(canonical_name(benchmark)), shlex.quote(str(data_root))
    return f"zocli prepare --benchmark {name} --data-root {root}"


def benchmark(cfg: Config) -> Benchmark:
    """The run's benchmark, in its class order: a shipped one, or the user's from its prepared record
    (so `train` and `eval` need only the prepared copy, never the source)."""
    name = canonical_name(cfg.benchmark)
    bench = catalogue.from_record(read_record(cfg.data_root, name)) if is_user(name) else catalogue.get(name)
    if cfg.class_order is None:
        return bench
    if cfg.class_order.startswith("seed:"):
        return catalogue.reorder(bench, cfg.class_order)
    return catalogue.reorder(bench, _read_order(Path(cfg.class_order)))


def read_record(data_root: Path | str, name: str) -> dict:
    path = dataset_dir(data_root, name) / RECORD
    if not path.is_file():
        same = " with the same --image-column/--label-column/--*-split options" if name.startswith("hf:") else ""
        raise NotReady(
            f"benchmark {name} is not prepared under {data_root}; run `{prepare_command(name, data_root)}`{same}"
        )
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("classes"), list) or len(record["names"]) != len(record["classes"]):
            raise ValueError("classes and names do not match")
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise NotReady(f"{path} is damaged ({exc}); run `{prepare_command(name, data_root)} --overwrite`") from None
    return {**record, "spec": name}


# --class-order FILE whose order a run recorded (zocli.run.inputs), used when the file is gone
RECORDED_ORDERS: dict[str, list] = {}


def use_recorded_order(path: str, order: list) -> None:
    RECORDED_ORDERS[str(path)] = list(order)


def _read_order(path: Path) -> list:
    if str(path) in RECORDED_ORDERS and not path.is_file():
        return RECORDED_ORDERS[str(path)]
    try:
        order = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--class-order {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--class-order {path} is not JSON ({exc})") from None
    if not isinstance(order, list):
        raise ConfigError(f"--class-order {path} must hold a JSON list of class ids or indices")
    return order
