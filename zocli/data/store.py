"""The disk side of the benchmarks: `prepare` writes a normalized copy, `load` reads it back (DESIGN §4).

A prepared benchmark is a `datasets.DatasetDict` saved with `save_to_disk` under
`data_root / <benchmark>`, with splits `train` and `test` and features
`{"image": Image(), "label": ClassLabel(names=bench.classes)}`: `label` indexes `Benchmark.classes`
and every image is RGB. `load` only calls `load_from_disk`, so training never touches the network.

`zocli.data.sources` reads each benchmark's images from where they come from (`--source` layouts included).
Nothing here prints: errors are exceptions with one-line messages, and status lines go to the
optional `on_progress` callback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from zocli.data import dirswap, fingerprint, hub, sources
from zocli.data.catalogue import Benchmark
from zocli.data.location import dataset_dir, prepare_command
from zocli.data.sources import Progress, SourceError
from zocli.errors import ZocliError


class DataMissing(ZocliError, RuntimeError):
    """The benchmark is not prepared (or is stale); the message names the `zocli prepare` command to run."""


# load


def load(bench: Benchmark, data_root: Path) -> DatasetDict:
    """The prepared copy of `bench`; raises DataMissing when it is absent, unreadable or stale."""
    path = dataset_dir(data_root, bench.name)
    dirswap.recover(path)
    command = prepare_command(bench.name, data_root)
    # prepare renames only complete copies into place, so a directory without dataset_dict.json
    # was made or damaged by something else.
    if not (path / "dataset_dict.json").is_file():
        raise DataMissing(f"benchmark {bench.name} is not prepared under {data_root}; run `{command}`")
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataMissing(
            f"{path} is not a readable prepared dataset ({type(exc).__name__}); run `{command} --overwrite`"
        ) from exc
    if not isinstance(dd, DatasetDict) or not {"train", "test"} <= set(dd):
        raise DataMissing(f"{path} lacks the train/test splits; run `{command} --overwrite`")
    for split in ("train", "test"):
        label = dd[split].features.get("label")
        if not isinstance(label, ClassLabel) or label.names != list(bench.classes):
            raise DataMissing(
                f"{path} was prepared with different classes than {bench.name} has now; run `{command} --overwrite`"
            )
    return dd


def prepared_sizes(name: str, data_root: Path) -> dict[str, int] | None:
    """Images per split of the copy of benchmark `name` already prepared under `data_root`, or None."""
    path = dataset_dir(data_root, name)
    if not (path / "dataset_dict.json").is_file():
        return None
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception:
        return None
    return {split: len(dd[split]) for split in dd}


# prepare


SOURCE_RECORD = "zocli_source.json"  # inside a prepared copy: its source, revision and content hash


def record_source(out: Path, source: str, revision: str | None) -> None:
    """Write the prepared copy's provenance into `out` (before it is swapped into place): where it came
    from, the source's revision (a hub commit hash) and a sha256 of the data files written."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(out).rglob("*.arrow") if p.is_file()):
        digest.update(f"{path.relative_to(out)}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    content = digest.hexdigest()
    record = {"source": source, "revision": revision or f"content sha256 {content}", "content_sha256": content}
    (Path(out) / SOURCE_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def prepare(
    bench: Benchmark,
    data_root: Path,
    source: Path | None = None,
    on_progress: Progress | None = None,
    overwrite: bool = False,
    allow_partial: bool = False,
    revision: str | None = None,
) -> Path:
    """Write the normalized copy of `bench` under `data_root` and return its directory.

    Idempotent: if the directory already exists and `overwrite` is false, it is returned unchanged
    (nothing is read or validated; `load` does that). The copy is written to a hidden temporary
    sibling and renamed into place, so an interrupted prepare never leaves a half dataset at the
    path `load` reads. A source lacking some classes is refused unless `allow_partial`: tasks take
    classes in the shipped order, so a missing class would only surface tasks later, mid-run.
    """
    target = dataset_dir(data_root, bench.name)
    if not needs_writing(target, overwrite):
        return target
    progress = progress_or_quiet(on_progress)
    with dirswap.staging(target) as tmp:
        dd = sources.read(bench, Path(source).expanduser() if source else None, tmp / "work", progress, revision)
        _check_complete(bench, dd, allow_partial, progress)
        progress(f"writing {len(dd['train'])} train + {len(dd['test'])} test images to {target}")
        dd.save_to_disk(str(tmp / "out"))
        record = fingerprint.of_dataset(tmp / "out", list(bench.classes), dd)
        fingerprint.write(tmp / "out", {**record, "partial": allow_partial})
        del dd  # drop the memory maps on tmp/work before it is deleted
        where = str(Path(source).expanduser()) if source else bench.hub_id or f"generated ({bench.name})"
        record_source(tmp / "out", where, None if source else hub.last_revision(bench.hub_id) or revision)
        dirswap.swap_in(tmp, tmp / "out", target)
    return target


def needs_writing(target: Path, overwrite: bool) -> bool:
    """Whether a prepared copy is to be written at `target`: one already there stands unless `overwrite`
    (after recovering from a swap that was interrupted)."""
    dirswap.recover(target)
    return overwrite or not target.exists()


def progress_or_quiet(on_progress: Progress | None) -> Progress:
    """`on_progress`, or else silence: no lines, and none of datasets' progress bars either."""
    if on_progress is None:
        datasets.disable_progress_bars()
        return lambda _line: None
    return on_progress


def class_counts(bench: Benchmark, ds: Dataset) -> np.ndarray:
    """Images per class (indexed like `bench.classes`) in one split."""
    return np.bincount(np.asarray(ds["label"], dtype=np.int64), minlength=bench.n_classes)


def _check_complete(bench: Benchmark, dd: DatasetDict, allow_partial: bool, progress: Progress) -> None:
    for split in ("train", "test"):
        empty = [bench.classes[i] for i in np.flatnonzero(class_counts(bench, dd[split]) == 0)]
        if not empty:
            continue
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        what = f"the source has no {split} images for {len(empty)} of {bench.n_classes} {bench.name} classes ({shown})"
        if not allow_partial:
            raise SourceError(
                f"{what}; every task needs its classes: use a complete copy, or --allow-partial "
                f"for a deliberate subset (tasks left without images refuse to train)"
            )
        progress(f"warning: {what}; tasks that contain them cannot be trained or evaluated")
