"""What a run's numbers depend on beyond its config (DESIGN §8): the protocol in words, the weights file's
sha256, the prepared data's source revision and content hash, library versions and the device. Recorded
in config.json and summary.json, shown in the banner, and compared by `zocli eval A B` (study.compare)."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from zocli import __version__
from zocli.data import location
from zocli.data.store import SOURCE_RECORD
from zocli.method.backbone import open_clip_name, resolve_weights

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, within one process


def record(session) -> dict[str, Any]:
    cfg = session.cfg
    return {
        "protocol": protocol(session),
        "weights": weights(cfg.model, cfg.pretrained),
        "data": data(cfg.data_root, session.bench.name),
        "versions": versions(),
        "device": device(session.device),
    }


def task_classes(session) -> list[list[str]]:
    """Each task's classes by name, in class order (summary.json; `eval RUN --tasks`)."""
    names = session.bench.prompt_names()
    return [names[slice(*session.split.bounds(t))] for t in range(session.split.n_tasks)]


def protocol(session) -> str:
    """The protocol in words: what a reader must know to compare the numbers with a paper's."""
    cfg, split, bench = session.cfg, session.split, session.bench
    order = cfg.class_order or f"the shipped order of {bench.name}"
    sizes = split.sizes
    of = f"{sizes[0]}" if len(set(sizes)) == 1 else f"{sizes[0]} then {sizes[1]}"
    return (
        f"class-incremental, {split.n_tasks} tasks of {of} classes, rehearsal-free, no task id at test time; "
        f"training loss over the current task's classes, evaluation logits over all classes seen so far; "
        f"class order: {order}; prompt {cfg.prompt!r}; eval crop: resize + center crop to "
        f"{session.model.image_size} px; weights {cfg.model} ({cfg.pretrained})"
    )


def weights(model: str, pretrained: str) -> dict[str, Any]:
    """The weights file's sha256 (a local-dir: model: of every file in it), or None for random init."""
    if pretrained.startswith("local-dir:"):
        folder = Path(pretrained.removeprefix("local-dir:")).expanduser()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\n".encode())
        return {"tag": pretrained, "file": str(folder), "sha256": digest.hexdigest()}
    path = resolve_weights(open_clip_name(model, pretrained), pretrained)
    if path is None:
        return {"tag": pretrained, "file": None, "sha256": None}
    return {"tag": pretrained, "file": str(path), "sha256": file_sha256(Path(path))}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def data(data_root: str, benchmark: str) -> dict[str, Any]:
    """The prepared copy's source, revision and content hash, as `prepare` recorded them."""
    path = location.dataset_dir(data_root, benchmark) / SOURCE_RECORD
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    return {
        "source": recorded.get("source"),
        "revision": recorded.get("revision") or "not recorded (prepared before zocli recorded revisions)",
        "content_sha256": recorded.get("content_sha256"),
    }


def environment() -> dict[str, Any]:
    """config.json's short environment record (kept for older readers; `provenance` has the full one)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"zocli": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("open_clip_torch", "datasets"):
        try:
            out[package.removesuffix("_torch")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package.removesuffix("_torch")] = None
    return out


def device(where: torch.device) -> dict[str, Any]:
    if where.type != "cuda":
        return {
            "name": platform.processor() or platform.machine() or "cpu",
            "type": "cpu",
            "cuda": None,
            "driver": None,
        }
    index = where.index if where.index is not None else torch.cuda.current_device()
    return {
        "name": torch.cuda.get_device_name(index),
        "type": "cuda",
        "cuda": torch.version.cuda,
        "driver": _driver(),
    }


def _driver() -> str | None:
    try:
        import pynvml  # optional; torch ships nvidia-ml-py on CUDA builds

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:
        return None
