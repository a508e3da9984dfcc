"""The disk side of the benchmarks: `prepare` writes a normalized copy, `load` reads it back (DESIGN §4).

A prepared benchmark is a `datasets.DatasetDict` saved with `save_to_disk` under
`data_root / <benchmark>`, with splits `train` and `test` and features
`{"image": Image(), "label": ClassLabel(names=bench.classes)}`: `label` indexes `Benchmark.classes`
and every image is RGB. `load` only calls `load_from_disk`, so training never touches the network.

Sources: the Hugging Face hub when online, or a local folder (`source`) in the layout each benchmark
documents below; `digits` comes from scikit-learn and needs neither. Nothing here prints: errors are
exceptions with one-line messages, and status lines go to the optional `on_progress` callback.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from .benchmarks import Benchmark, canonical_name

Progress = Callable[[str], None]
SPLIT_SEED = 1993  # ImageNet-R's fixed per-class 80/20 split (DESIGN §4)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
LAYOUTS = {  # what `--source DIR` must look like, quoted in error messages
    "cifar100": "DIR/{train,test}/<fine-label name>/*.png, or a save_to_disk copy",
    "tinyimg": "the official tiny-imagenet-200/ folder (train/<wnid>/images/*.JPEG, val/val_annotations.txt)",
    "imgr": "a folder of wnid sub-folders DIR/<wnid>/*.jpg (the official imagenet-r/)",
}


class DataMissing(RuntimeError):
    """The benchmark is not prepared (or is stale); the message names the `zocli prepare` command to run."""


class SourceError(RuntimeError):
    """The data source cannot be used: an unrecognised --source folder, or the hub is unreachable."""


def dataset_dir(data_root: Path, benchmark: str) -> Path:
    return Path(data_root).expanduser() / canonical_name(benchmark)


def _features(bench: Benchmark) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=list(bench.classes))})


# load


def load(bench: Benchmark, data_root: Path) -> DatasetDict:
    """The prepared copy of `bench`; raises DataMissing when it is absent, unreadable or stale."""
    path = dataset_dir(data_root, bench.name)
    command = f"zocli prepare --benchmark {bench.name} --data-root {shlex.quote(str(data_root))}"
    # prepare renames only complete copies into place, so a directory without dataset_dict.json
    # was made or damaged by something else.
    if not (path / "dataset_dict.json").is_file():
        raise DataMissing(f"benchmark {bench.name} is not prepared under {data_root}; run `{command}`")
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means "re-prepare"
        raise DataMissing(f"{path} is not a readable prepared dataset ({type(exc).__name__}); "
                          f"run `{command} --overwrite`") from exc
    if not isinstance(dd, DatasetDict) or not {"train", "test"} <= set(dd):
        raise DataMissing(f"{path} lacks the train/test splits; run `{command} --overwrite`")
    for split in ("train", "test"):
        label = dd[split].features.get("label")
        if not isinstance(label, ClassLabel) or label.names != list(bench.classes):
            raise DataMissing(f"{path} was prepared with different classes than {bench.name} has now; "
                              f"run `{command} --overwrite`")
    return dd


# prepare


def prepare(bench: Benchmark, data_root: Path, source: Path | None = None,
            on_progress: Progress | None = None, overwrite: bool = False) -> Path:
    """Write the normalized copy of `bench` under `data_root` and return its directory.

    Idempotent: if the directory already exists and `overwrite` is false, it is returned unchanged
    (nothing is read or validated; `load` does that). The copy is written to a hidden temporary
    sibling and renamed into place, so an interrupted prepare never leaves a half dataset at the
    path `load` reads.
    """
    target = dataset_dir(data_root, bench.name)
    if target.exists() and not overwrite:
        return target
    if on_progress is None:
        datasets.disable_progress_bars()
    progress = on_progress or (lambda _line: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        dd = _build(bench, Path(source).expanduser() if source else None, tmp / "work", progress)
        progress(f"writing {len(dd['train'])} train + {len(dd['test'])} test images to {target}")
        dd.save_to_disk(str(tmp / "out"))
        del dd  # drop the memory maps on tmp/work before it is deleted
        _move_into_place(tmp / "out", target, tmp / "old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(new: Path, target: Path, trash: Path) -> None:
    # os.replace cannot replace a non-empty directory, so an old copy is first moved aside (same
    # filesystem, both renames are atomic) and deleted with the temporary directory.
    if target.exists():
        os.replace(target, trash)
    os.replace(new, target)


def _build(bench: Benchmark, source: Path | None, work: Path, progress: Progress) -> DatasetDict:
    if bench.name == "digits":
        if source is not None:
            raise SourceError("digits ships with scikit-learn; --source does not apply")
        return _digits(bench)
    if source is None:
        return _from_hub(bench, work, progress)
    if not source.is_dir():
        raise SourceError(f"--source {source} is not a directory; expected {LAYOUTS[bench.name]}")
    if (source / "dataset_dict.json").is_file():
        return _from_saved(bench, source, work, progress)
    readers = {"cifar100": _cifar_folder, "tinyimg": _tiny_folder, "imgr": _imgr_folder}
    return readers[bench.name](bench, source, work, progress)


# normalization shared by every source


def _normalize(ds: Dataset, bench: Benchmark, image_col: str, label_col: str,
               lookup: Mapping | None, cache: Path) -> Dataset:
    """Keep only image + label, map labels through `lookup` (source value -> class index), force RGB."""
    raw = Features({"image": Image(decode=False), "label": _features(bench)["label"]})
    ds = ds.select_columns([image_col, label_col])
    ds = ds.cast_column(image_col, Image(decode=False))  # cells stay encoded: RGB ones are copied as-is

    def convert(batch: dict) -> dict:
        labels = batch[label_col] if lookup is None else [lookup[v] for v in batch[label_col]]
        return {"image": [_rgb(cell) for cell in batch[image_col]], "label": labels}

    cache.parent.mkdir(parents=True, exist_ok=True)
    ds = ds.map(convert, batched=True, remove_columns=ds.column_names, features=raw,
                cache_file_name=str(cache))  # on disk in the temp dir, not in RAM
    return ds.cast_column("image", Image())


def _rgb(cell: dict) -> dict:
    """The encoded image unchanged if it is RGB, else re-encoded as an RGB PNG (lossless)."""
    try:
        # PIL.Image.open reads only the header, so checking the mode costs no decode.
        with PIL.Image.open(io.BytesIO(cell["bytes"]) if cell["bytes"] else cell["path"]) as im:
            if im.mode == "RGB":
                return cell
            rgb = im.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise SourceError(f"cannot read image {cell.get('path') or '<bytes>'}: {exc}") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _class_index(bench: Benchmark) -> dict[str, int]:
    index = {name: i for i, name in enumerate(bench.classes)}
    if bench.name == "cifar100":
        index["cra"] = index["crab"]  # the HF copy's typo for index 26
    return index


def _lookup_names(bench: Benchmark, names: list[str], what: str) -> dict:
    """Source label id -> class index, by name; SourceError listing names that are not classes."""
    index = _class_index(bench)
    unknown = sorted(set(names) - set(index))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise SourceError(f"{what} has {len(unknown)} names that are not {bench.name} classes: {shown}")
    return {i: index[name] for i, name in enumerate(names)}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# sources


def _digits(bench: Benchmark) -> DatasetDict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 8x8 values 0..16
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rows = np.arange(len(rgb))
    train, test = train_test_split(rows, test_size=0.2, stratify=digits.target, random_state=0)
    return DatasetDict({
        split: Dataset.from_dict({"image": list(rgb[idx]), "label": digits.target[idx].tolist()},
                                 features=_features(bench))
        for split, idx in (("train", np.sort(train)), ("test", np.sort(test)))
    })


def _load_hub(bench: Benchmark, progress: Progress, **kwargs):
    progress(f"downloading {bench.hub_id} from the Hugging Face hub")
    try:
        return datasets.load_dataset(bench.hub_id, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline, DNS, 404, auth: all mean "use --source"
        reason = " ".join(str(exc).split())[:160]
        raise SourceError(f"cannot load {bench.hub_id} from the Hugging Face hub ({type(exc).__name__}: "
                          f"{reason}); offline? pass --source DIR with {LAYOUTS[bench.name]}") from exc


def _from_hub(bench: Benchmark, work: Path, progress: Progress) -> DatasetDict:
    if bench.name == "imgr":
        return _imgr_rows(bench, _load_hub(bench, progress, split="test"), "image", "wnid", work, progress)
    dd = _load_hub(bench, progress)
    image_col, label_col, test = {"cifar100": ("img", "fine_label", "test"),
                                  "tinyimg": ("image", "label", "valid")}[bench.name]
    lookup = _lookup_names(bench, dd["train"].features[label_col].names, bench.hub_id)
    out = {}
    for split, hub_split in (("train", "train"), ("test", test)):
        progress(f"normalizing {split} ({len(dd[hub_split])} images)")
        out[split] = _normalize(dd[hub_split], bench, image_col, label_col, lookup, work / f"{split}.arrow")
    return DatasetDict(out)


def _from_saved(bench: Benchmark, source: Path, work: Path, progress: Progress) -> DatasetDict:
    """A `save_to_disk` copy: the hub's columns (img/fine_label, image/label) or our own."""
    progress(f"reading the saved dataset {source}")
    dd = datasets.load_from_disk(str(source))
    splits = list(dd) if isinstance(dd, DatasetDict) else []
    test = next((s for s in ("test", "valid", "validation") if s in splits), None)
    if "train" not in splits or test is None:
        raise SourceError(f"saved dataset {source} needs train and test splits, has [{', '.join(splits)}]")
    cols = dd["train"].features
    image_col = next((c for c in ("img", "image") if c in cols), None)
    label_col = next((c for c in ("fine_label", "label") if isinstance(cols.get(c), ClassLabel)), None)
    if image_col is None or label_col is None:
        raise SourceError(f"saved dataset {source} has columns {', '.join(cols)}; expected an image "
                          "column (img or image) and a ClassLabel (fine_label or label)")
    lookup = _lookup_names(bench, cols[label_col].names, str(source))
    return DatasetDict({split: _normalize(dd[s], bench, image_col, label_col, lookup, work / f"{split}.arrow")
                        for split, s in (("train", "train"), ("test", test))})


def _cifar_folder(bench: Benchmark, source: Path, work: Path, progress: Progress) -> DatasetDict:
    """DIR/{train,test}/<fine-label name>/*.png; folder names are matched to classes by name."""
    index = _class_index(bench)
    out = {}
    for split in ("train", "test"):
        if not (source / split).is_dir():
            raise SourceError(f"--source {source} has no {split}/ folder; expected {LAYOUTS['cifar100']}")
        folders = sorted(p for p in (source / split).iterdir() if p.is_dir())
        _lookup_names(bench, [p.name for p in folders], f"{source / split}")
        files = [(str(f), index[d.name]) for d in folders for f in _image_files(d)]
        out[split] = _files_split(bench, files, f"{source / split}", work / f"{split}.arrow", progress)
    return DatasetDict(out)


def _tiny_folder(bench: Benchmark, source: Path, work: Path, progress: Progress) -> DatasetDict:
    """The official tiny-imagenet-200/ layout, given as DIR itself or its parent."""
    root = source if (source / "train").is_dir() else source / "tiny-imagenet-200"
    annotations = root / "val" / "val_annotations.txt"
    if not (root / "train").is_dir() or not annotations.is_file():
        raise SourceError(f"--source {source} is not Tiny-ImageNet; expected {LAYOUTS['tinyimg']}")
    folders = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    _lookup_names(bench, [p.name for p in folders], str(root / "train"))
    index = _class_index(bench)
    train = [(str(f), index[d.name]) for d in folders for f in _image_files(d / "images")]
    rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
    short = next((n for n, row in enumerate(rows, 1) if len(row) < 2), None)
    if short is not None:
        raise SourceError(f"{annotations}: line {short} is not 'FILE<TAB>WNID<TAB>...'; expected {LAYOUTS['tinyimg']}")
    _lookup_names(bench, sorted({wnid for _, wnid in rows}), str(annotations))
    test = [(str(root / "val" / "images" / name), index[wnid]) for name, wnid in rows]
    missing = [p for p, _ in test if not os.path.isfile(p)]
    if missing:
        raise SourceError(f"{len(missing)} images listed in {annotations} are missing, e.g. {missing[0]}")
    return DatasetDict({"train": _files_split(bench, train, str(root / "train"), work / "train.arrow", progress),
                        "test": _files_split(bench, test, str(root / "val"), work / "test.arrow", progress)})


def _files_split(bench: Benchmark, files: list[tuple[str, int]], where: str, cache: Path,
                 progress: Progress) -> Dataset:
    if not files:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {where}")
    n_classes = len({label for _, label in files})
    progress(f"{where}: {len(files)} images of {n_classes}/{bench.n_classes} classes")
    paths, labels = zip(*files, strict=True)
    # The Image feature stores paths; save_to_disk embeds the file bytes, so the copy is standalone.
    ds = Dataset.from_dict({"image": list(paths), "label": list(labels)}, features=_features(bench))
    return _normalize(ds, bench, "image", "label", None, cache)


def _imgr_folder(bench: Benchmark, source: Path, work: Path, progress: Progress) -> DatasetDict:
    """DIR/<wnid>/*.jpg (or DIR/imagenet-r/<wnid>/...), split 80/20 per class at prepare time."""
    root = source / "imagenet-r" if (source / "imagenet-r").is_dir() else source
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise SourceError(f"--source {source} has no class folders; expected {LAYOUTS['imgr']}")
    _lookup_names(bench, [p.name for p in folders], str(root))
    files = [(str(f), d.name) for d in folders for f in _image_files(d)]  # sorted by class, then filename
    if not files:
        raise SourceError(f"no images found under {root}; expected {LAYOUTS['imgr']}")
    progress(f"{root}: {len(files)} images of {len(folders)}/{bench.n_classes} classes")
    paths, wnids = zip(*files, strict=True)
    ds = Dataset.from_dict({"image": list(paths), "wnid": list(wnids)}, features=Features(
        {"image": Image(), "wnid": datasets.Value("string")}))
    return _imgr_rows(bench, ds, "image", "wnid", work, progress)


def _imgr_rows(bench: Benchmark, ds: Dataset, image_col: str, wnid_col: str, work: Path,
               progress: Progress) -> DatasetDict:
    wnids = list(ds[wnid_col])
    index = _class_index(bench)
    _lookup_names(bench, sorted(set(wnids)), "the ImageNet-R source")
    train, test = _per_class_split(np.array([index[w] for w in wnids]))
    progress(f"split {len(wnids)} images per class 80/20 (seed {SPLIT_SEED})")
    return DatasetDict({split: _normalize(ds.select(rows), bench, image_col, wnid_col, index,
                                          work / f"{split}.arrow")
                        for split, rows in (("train", train), ("test", test))})


def _per_class_split(labels: np.ndarray, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): per class, a RandomState(1993) permutation of its rows in row order.

    A fresh generator per class makes each class's split independent of which other classes exist.
    """
    train, test = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        perm = np.random.RandomState(SPLIT_SEED).permutation(len(rows))
        n_train = int(np.floor(train_fraction * len(rows) + 0.5))
        train.append(rows[perm[:n_train]])
        test.append(rows[perm[n_train:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
