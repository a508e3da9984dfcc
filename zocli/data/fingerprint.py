"""What a prepared copy holds, in a few hundred bytes: its classes, images per class and split, and a
hash of the split files' metadata — recorded by `prepare` beside the copy and by `train` in the run, so
a copy re-prepared or edited under a run is noticed (zocli.run.inputs).

The hash covers each split's `state.json` (the datasets fingerprint and its file list),
`dataset_info.json` (the features: class names) and every data file's name and size, never the images'
bytes: cheap on a copy of any size, and any re-prepare from a different source changes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RECORD = "zocli_fingerprint.json"  # written by prepare inside the copy
SPLITS = ("train", "test")
META_FILES = ("state.json", "dataset_info.json")


def files_hash(copy: Path) -> str:
    """sha256 over the split files' metadata (see the module docstring)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        folder = copy / split
        for name in META_FILES:
            path = folder / name
            digest.update(f"{split}/{name}\0".encode())
            digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        for data in sorted(folder.glob("*.arrow")) if folder.is_dir() else ():
            digest.update(f"{split}/{data.name}:{data.stat().st_size}\0".encode())
    return digest.hexdigest()


def fingerprint(copy: Path, classes: list[str], counts: dict[str, list[int]]) -> dict[str, Any]:
    """The record of a copy whose splits hold `counts[split][i]` images of `classes[i]`."""
    return {
        "classes": list(classes),
        "counts": {k: list(map(int, v)) for k, v in counts.items()},
        "files": files_hash(copy),
    }


def of_dataset(copy: Path, classes: list[str], dataset) -> dict[str, Any]:
    """The record of a loaded DatasetDict (labels index `classes`) saved at `copy`."""
    import numpy as np

    counts = {
        split: np.bincount(np.asarray(dataset[split]["label"], dtype=np.int64), minlength=len(classes)).tolist()
        for split in SPLITS
    }
    return fingerprint(copy, classes, counts)


def write(copy: Path, record: dict[str, Any]) -> None:
    (copy / RECORD).write_text(json.dumps(record) + "\n")


def read(copy: Path) -> dict[str, Any] | None:
    """What prepare recorded, or None (a copy prepared before fingerprints, or the record is damaged)."""
    try:
        record = json.loads((copy / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
