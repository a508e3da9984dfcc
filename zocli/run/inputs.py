"""The inputs a run reads again at `eval` and `--resume`, recorded at train start and verified after.

A run depends on files outside its directory: the class-order file, a model-config JSON, the prepared
data and the weights. Compared by path only, an order file reversed after training made `eval` report a
different accuracy matrix and `--resume` train the rest of the run under another order, exit 0. So
config.json's `inputs` holds what each was at train start:

- class order: the order itself (the list of classes), not the path;
- model config (`--model FILE.json`): the JSON itself and its sha256 (of the canonical JSON), so `eval`
  and `--resume` build the model from the run alone when the file is gone;
- prepared data: its classes, images per class per split, and a hash of the split files' metadata
  (zocli.data.fingerprint: state.json, dataset_info.json, data file sizes — never the images' bytes);
  `prepare` records the same beside the copy, and train start checks the copy against it;
- weights: the file's sha256.

`verify` compares each with what is there now. A difference stops the command with one line naming the
file, what was recorded and what is there now (exit 1) before anything is written, unless the user passes
`--allow-changed-inputs`: then the inputs are used as they are now, and the run logs an `inputs_changed`
event (resume) or the evaluation reports the changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zocli.config import Config
from zocli.data import fingerprint, location
from zocli.data.catalogue import canonical_name
from zocli.errors import ZocliError
from zocli.method import backbone
from zocli.run.provenance import file_sha256

ESCAPE = "--allow-changed-inputs"


class InputChanged(ZocliError):
    """An input a run recorded is different now (exit 1)."""


class DataIncomplete(ZocliError):
    """The prepared copy lacks whole classes it was not prepared to lack (exit 1)."""


@dataclass(frozen=True)
class Change:
    file: str
    what: str
    recorded: str
    now: str

    def line(self, who: str = "the run") -> str:
        return f"{self.file}: {self.what} differs from what {who} recorded: recorded {self.recorded}, now {self.now}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- train start


def pin_model_config(cfg: Config) -> dict | None:
    """A `--model FILE.json` read once, checked, and used for this process: what the run records."""
    if not cfg.model.endswith(".json"):
        return None
    content = backbone.read_model_config(Path(cfg.model))
    backbone.use_recorded_config(cfg.model, content)
    return content


def record(session, model_config: dict | None) -> dict[str, Any]:
    """config.json's `inputs`: what this run read, at its start (refuses a copy changed since prepare)."""
    cfg, bench = session.cfg, session.bench
    copy = location.dataset_dir(cfg.data_root, canonical_name(cfg.benchmark))
    classes = list(bench.classes)
    counts = {
        split: _bincount(labels, len(classes))
        for split, labels in (("train", session.train_labels), ("test", session.test_labels))
    }
    data = fingerprint.fingerprint(copy, classes, counts)
    prepared = fingerprint.read(copy)
    if prepared is not None:
        changes = _data_changes(str(copy), prepared, data)
        if changes:
            raise InputChanged(
                f"{changes[0].line('`zocli prepare`')}; the copy was changed after it was prepared: prepare it "
                f"again with --overwrite"
            )
    _check_complete(str(copy), classes, counts, bool(prepared and prepared.get("partial")))
    weights = backbone.weights_file(cfg.model, cfg.pretrained)
    return {
        "class_order": {"file": cfg.class_order, "order": list(bench.order)},
        "model_config": (
            {"file": cfg.model, "sha256": content_hash(model_config), "json": model_config}
            if model_config is not None
            else None
        ),
        "data": {"dir": str(copy), **data},
        "weights": {"file": str(weights), "sha256": file_sha256(weights)} if weights is not None else None,
    }


def _bincount(labels, n: int) -> list[int]:
    counts = [0] * n
    for label in labels:
        counts[int(label)] += 1
    return counts


def _check_complete(copy: str, classes: list[str], counts: dict[str, list[int]], partial: bool) -> None:
    if partial:
        return  # prepared with --allow-partial: the user's choice (a task with no images is still refused)
    for split, per_class in counts.items():
        empty = [classes[i] for i, n in enumerate(per_class) if n == 0]
        if empty:
            raise DataIncomplete(
                f"{copy}: the prepared copy has no {split} images of class(es) {', '.join(empty[:5])}"
                f"{' …' if len(empty) > 5 else ''}; prepare it again from a complete source with --overwrite "
                f"(or with --allow-partial to train without them)"
            )


# ---------------------------------------------------------------------------------------------- eval, resume


def verify(saved: dict[str, Any], cfg: Config, allow: bool = False, recorded_order: list | None = None) -> list[Change]:
    """Compare what config.json recorded (`saved`: the whole file) with the inputs now; raise InputChanged
    on the first difference unless `allow`. Recorded content (order, model config) stands in for a file
    that is gone. `recorded_order`: a checkpoint's class order, for runs from before `inputs`."""
    inputs = saved.get("inputs") if isinstance(saved.get("inputs"), dict) else {}
    changes: list[Change] = []
    model = inputs.get("model_config")
    if isinstance(model, dict) and isinstance(model.get("json"), dict):
        changes += _model_change(model, cfg, allow)
    order = inputs.get("class_order") or {}
    wanted = order.get("order") if isinstance(order, dict) else None
    if wanted is None:
        wanted = (saved.get("benchmark") or {}).get("order") if isinstance(saved.get("benchmark"), dict) else None
    if wanted is None:
        wanted = recorded_order
    if isinstance(wanted, list):
        changes += _order_change(wanted, cfg)
    data = inputs.get("data")
    if isinstance(data, dict) and "files" in data:
        changes += _data_change(data, cfg)
    weights = inputs.get("weights")
    if isinstance(weights, dict) and "sha256" in weights:
        now = backbone.weights_file(cfg.model, cfg.pretrained)
        digest = file_sha256(now) if now is not None else "no weights file"
        if digest != weights["sha256"]:
            changes.append(
                Change(str(now or weights["file"]), "the weights' sha256", weights["sha256"][:16], digest[:16])
            )
    if changes and not allow:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise InputChanged(
            f"{changes[0].line()}{more}; nothing was changed: restore it, or pass {ESCAPE} to use the inputs "
            f"as they are now (the run records that)"
        )
    return changes


def _model_change(model: dict, cfg: Config, allow: bool) -> list[Change]:
    path = Path(cfg.model).expanduser()
    if path.is_file():
        try:
            now = backbone.read_model_config(path)
        except ZocliError as exc:
            now_text, now = f"unusable ({exc})", None
        else:
            now_text = f"sha256 {content_hash(now)[:16]}{_first_key_change(model['json'], now)}"
        if now is None or content_hash(now) != model["sha256"]:  # allowed: the file as it is now
            return [Change(str(path), "the model config", f"sha256 {model['sha256'][:16]}", now_text)]
    backbone.use_recorded_config(cfg.model, model["json"])  # the same content, or the file is gone
    return []


def _first_key_change(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_key_change(old.get(key), new.get(key), f"{prefix}{key}.")
        return ""
    return f" ({prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)})"


def _order_change(wanted: list, cfg: Config) -> list[Change]:
    source = cfg.class_order
    if source is not None and not source.startswith("seed:") and not Path(source).is_file():
        location.use_recorded_order(source, wanted)  # the file is gone: the run's own record stands in
        return []
    now = list(location.benchmark(cfg).order)
    if now == wanted:
        return []
    where = next((i for i, (a, b) in enumerate(zip(wanted, now)) if a != b), min(len(wanted), len(now)))
    recorded = f"{len(wanted)} classes, position {where} = {_at(wanted, where)}"
    return [Change(source or f"the {cfg.benchmark} class order", "the class order", recorded, _at(now, where))]


def _at(order: list, i: int) -> str:
    return json.dumps(order[i]) if i < len(order) else "(none)"


def _data_change(data: dict, cfg: Config) -> list[Change]:
    copy = location.dataset_dir(cfg.data_root, canonical_name(cfg.benchmark))
    if not (copy / "dataset_dict.json").is_file():
        return []  # not prepared (here): the data checks say so, or a generated benchmark is made again
    if fingerprint.files_hash(copy) == data["files"]:
        return []
    from zocli.data import store

    bench = location.benchmark(Config(benchmark=cfg.benchmark, data_root=cfg.data_root))
    try:
        dataset = store.load(bench, Path(cfg.data_root).expanduser())
        now = fingerprint.of_dataset(copy, list(bench.classes), dataset)
    except ZocliError:
        now = {"classes": list(bench.classes), "counts": {}, "files": fingerprint.files_hash(copy)}
    except Exception as exc:  # store.DataMissing predates ZocliError
        if type(exc).__name__ != "DataMissing":
            raise
        now = {"classes": list(bench.classes), "counts": {}, "files": fingerprint.files_hash(copy)}
    return _data_changes(str(copy), data, now) or [
        Change(str(copy), "the prepared copy's split files", f"hash {data['files'][:16]}", f"hash {now['files'][:16]}")
    ]


def _data_changes(copy: str, recorded: dict, now: dict) -> list[Change]:
    if recorded.get("classes") != now.get("classes"):
        old, new = recorded.get("classes") or [], now.get("classes") or []
        gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
        detail = f"without {', '.join(gone[:3])}" if gone else "in another order"
        return [
            Change(
                copy,
                "the prepared classes",
                f"{len(old)} classes",
                f"{len(new)} classes, {detail}" + (f", with {', '.join(added[:3])}" if added else ""),
            )
        ]
    for split in ("train", "test"):
        old, new = (recorded.get("counts") or {}).get(split), (now.get("counts") or {}).get(split)
        if old is not None and new is not None and old != new:
            return [Change(copy, f"the {split} images", f"{sum(old)} images", f"{sum(new)} images")]
    if recorded.get("files") != now.get("files"):
        return [
            Change(
                copy,
                "the prepared copy's split files",
                f"hash {str(recorded.get('files'))[:16]}",
                f"hash {str(now.get('files'))[:16]}",
            )
        ]
    return []
