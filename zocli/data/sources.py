"""Reading each shipped benchmark's source into normalized splits, ready for `zocli.data.store` to save.

The sources: scikit-learn's `digits`, the generated test-bed (`zocli.data.testbed`), the Hugging Face hub,
a `save_to_disk` copy, and the folder layouts of CIFAR-100, Tiny-ImageNet and ImageNet-R given as
`--source DIR` (`LAYOUTS`). Every reader ends in `normalize`: features `{"image": Image(), "label":
ClassLabel(names=bench.classes)}` with `label` indexing `Benchmark.classes` and every image RGB.
ImageNet-R ships without a test split, so `per_class_split` draws one, the same on every machine.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from zocli.data import hub, testbed
from zocli.data.catalogue import GENERATED, Benchmark
from zocli.errors import ZocliError

Progress = Callable[[str], None]
PRESIZE = 256  # imgr's stored shorter side: train crops keep ≥ 90 % of the area, so they still shrink to 224
SPLIT_SEED = 1993  # ImageNet-R's fixed per-class 80/20 split (DESIGN §4)
TESTBED_SEED = 0  # the one world the benchmark is drawn from: every copy of `testbed` is identical
TESTBED_PER_CLASS = {"train": 60, "test": 20}  # 6,000 + 2,000 images, CIFAR-100-shaped at a CPU's scale
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
LAYOUTS = {  # what `--source DIR` must look like, quoted in error messages
    "cifar100": "DIR/{train,test}/<fine-label name>/*.png, or a save_to_disk copy",
    "tinyimg": "the official tiny-imagenet-200/ folder (train/<wnid>/images/*.JPEG, val/val_annotations.txt)",
    "imgr": "a folder of wnid sub-folders DIR/<wnid>/*.jpg (the official imagenet-r/)",
}


class SourceError(ZocliError, RuntimeError):
    """The data source cannot be used: an unrecognised --source folder, or the hub is unreachable."""


def _features(bench: Benchmark) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=list(bench.classes))})


def read(
    bench: Benchmark, source: Path | None, work: Path, progress: Progress, revision: str | None = None
) -> DatasetDict:
    """The train and test splits of `bench`, normalized, from `source` (a folder), or else from where the
    benchmark comes from: made here (`GENERATED`) or the hub at `revision`. `work` holds the on-disk caches."""
    if (bench.name in GENERATED or source is not None) and revision is not None:
        raise SourceError(f"--revision pins a Hugging Face hub source; {bench.name} here is not read from the hub")
    if bench.name in GENERATED:
        if source is not None:
            raise SourceError(f"{bench.name} is made on this machine; --source does not apply")
        return _digits(bench) if bench.name == "digits" else _testbed(bench, progress)
    if source is None:
        return _from_hub(bench, work, progress, revision)
    if not source.is_dir():
        raise SourceError(f"--source {source} is not a directory; expected {LAYOUTS[bench.name]}")
    if (source / "dataset_dict.json").is_file():
        return _from_saved(bench, source, work, progress)
    readers = {"cifar100": _cifar_folder, "tinyimg": _tiny_folder, "imgr": _imgr_folder}
    return readers[bench.name](bench, source, work, progress)


# normalization shared by every source


def normalize(
    ds: Dataset, bench: Benchmark, image_col: str, label_col: str, lookup: Mapping | None, cache: Path
) -> Dataset:
    """Keep only image + label, map labels through `lookup` (source value -> class index), force RGB."""
    raw = Features({"image": Image(decode=False), "label": _features(bench)["label"]})
    shorter = PRESIZE if bench.name == "imgr" else None  # large photos: a small copy, decoded fast by workers
    ds = ds.select_columns([image_col, label_col])
    ds = ds.cast_column(image_col, Image(decode=False))  # cells stay encoded: RGB ones are copied as-is

    def convert(batch: dict, rows: list[int]) -> dict:
        labels = batch[label_col] if lookup is None else [lookup[v] for v in batch[label_col]]

        def where(row):
            return f"row {row} of the {cache.stem} split ({image_col!r} column)"

        return {"image": [_rgb(cell, shorter, where(r)) for cell, r in zip(batch[image_col], rows)], "label": labels}

    cache.parent.mkdir(parents=True, exist_ok=True)
    ds = ds.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=raw,
        cache_file_name=str(cache),
    )  # on disk in the temp dir, not in RAM
    return ds.cast_column("image", Image())


def _rgb(cell: dict, shorter: int | None = None, where: str = "") -> dict:
    """The encoded image unchanged if it is RGB (and its shorter side ≤ `shorter`), else re-encoded as an
    RGB PNG (lossless), or, shrunk to `shorter` px on the shorter side, as a quality-95 JPEG. Every image
    is decoded in full here: a truncated file whose header reads fine is refused at prepare, not mid-run."""
    try:
        with PIL.Image.open(io.BytesIO(cell["bytes"]) if cell["bytes"] else cell["path"]) as im:
            im.load()  # the whole image: PIL.Image.open reads only the header
            large = shorter is not None and min(im.size) > shorter
            if im.mode == "RGB" and not large:
                return cell
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as exc:
        name = cell.get("path") or where or "an image"
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "these bytes", str(exc))
        raise SourceError(f"cannot read image {name}: {reason}; remove or replace it and prepare again") from None
    buffer = io.BytesIO()
    if large:
        scale = shorter / min(rgb.size)
        rgb = rgb.resize(
            (max(shorter, round(rgb.width * scale)), max(shorter, round(rgb.height * scale))),
            PIL.Image.Resampling.BICUBIC,
            reducing_gap=None,
        )
        rgb.save(buffer, format="JPEG", quality=95)
    else:
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


# the readers


def _digits(bench: Benchmark) -> DatasetDict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 8x8 values 0..16
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rows = np.arange(len(rgb))
    train, test = train_test_split(rows, test_size=0.2, stratify=digits.target, random_state=0)
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"image": list(rgb[idx]), "label": digits.target[idx].tolist()}, features=_features(bench)
            )
            for split, idx in (("train", np.sort(train)), ("test", np.sort(test)))
        }
    )


def _testbed(bench: Benchmark, progress: Progress) -> DatasetDict:
    out = {}
    for split, per_class in TESTBED_PER_CLASS.items():
        labels = np.repeat(np.arange(bench.n_classes), per_class)
        progress(f"drawing {len(labels)} {split} images of the test-bed world (seed {TESTBED_SEED})")
        pixels = list(testbed.images(labels, "benchmark", TESTBED_SEED, split))
        out[split] = Dataset.from_dict({"image": pixels, "label": labels.tolist()}, features=_features(bench))
    return DatasetDict(out)


def _load_hub(bench: Benchmark, progress: Progress, revision: str | None = None, **kwargs):
    with hub.offline_unless_reachable() as online:
        progress(
            f"downloading {bench.hub_id} from the Hugging Face hub"
            if online
            else f"the Hugging Face hub is offline or unreachable: looking for {bench.hub_id} in its local cache"
        )
        try:
            loaded = datasets.load_dataset(bench.hub_id, revision=revision, **kwargs)
            if online:
                hub.note_revision(bench.hub_id, revision)
            return loaded
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160]
            why = (
                f"from the Hugging Face hub ({type(exc).__name__}: {reason})"
                if online
                else "(the Hugging Face hub is unreachable or HF_HUB_OFFLINE is set, and its local cache lacks it)"
            )
            raise SourceError(
                f"cannot load {bench.hub_id} {why}; pass --source DIR with {LAYOUTS[bench.name]}"
            ) from exc


def _from_hub(bench: Benchmark, work: Path, progress: Progress, revision: str | None = None) -> DatasetDict:
    if bench.name == "imgr":
        rows = _load_hub(bench, progress, revision, split="test")
        return _imgr_rows(bench, rows, "image", "wnid", work, progress)
    dd = _load_hub(bench, progress, revision)
    image_col, label_col, test = {"cifar100": ("img", "fine_label", "test"), "tinyimg": ("image", "label", "valid")}[
        bench.name
    ]
    lookup = _lookup_names(bench, dd["train"].features[label_col].names, bench.hub_id)
    out = {}
    for split, hub_split in (("train", "train"), ("test", test)):
        progress(f"normalizing {split} ({len(dd[hub_split])} images)")
        out[split] = normalize(dd[hub_split], bench, image_col, label_col, lookup, work / f"{split}.arrow")
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
        raise SourceError(
            f"saved dataset {source} has columns {', '.join(cols)}; expected an image "
            "column (img or image) and a ClassLabel (fine_label or label)"
        )
    lookup = _lookup_names(bench, cols[label_col].names, str(source))
    return DatasetDict(
        {
            split: normalize(dd[s], bench, image_col, label_col, lookup, work / f"{split}.arrow")
            for split, s in (("train", "train"), ("test", test))
        }
    )


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
    return DatasetDict(
        {
            "train": _files_split(bench, train, str(root / "train"), work / "train.arrow", progress),
            "test": _files_split(bench, test, str(root / "val"), work / "test.arrow", progress),
        }
    )


def _files_split(
    bench: Benchmark, files: list[tuple[str, int]], where: str, cache: Path, progress: Progress
) -> Dataset:
    if not files:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {where}")
    n_classes = len({label for _, label in files})
    progress(f"{where}: {len(files)} images of {n_classes}/{bench.n_classes} classes")
    paths, labels = zip(*files, strict=True)
    # The Image feature stores paths; save_to_disk embeds the file bytes, so the copy is standalone.
    ds = Dataset.from_dict({"image": list(paths), "label": list(labels)}, features=_features(bench))
    return normalize(ds, bench, "image", "label", None, cache)


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
    ds = Dataset.from_dict(
        {"image": list(paths), "wnid": list(wnids)},
        features=Features({"image": Image(), "wnid": datasets.Value("string")}),
    )
    return _imgr_rows(bench, ds, "image", "wnid", work, progress)


def _imgr_rows(
    bench: Benchmark, ds: Dataset, image_col: str, wnid_col: str, work: Path, progress: Progress
) -> DatasetDict:
    wnids = list(ds[wnid_col])
    index = _class_index(bench)
    _lookup_names(bench, sorted(set(wnids)), "the ImageNet-R source")
    train, test = per_class_split(np.array([index[w] for w in wnids]))
    progress(f"split {len(wnids)} images per class 80/20 (seed {SPLIT_SEED})")
    return DatasetDict(
        {
            split: normalize(ds.select(rows), bench, image_col, wnid_col, index, work / f"{split}.arrow")
            for split, rows in (("train", train), ("test", test))
        }
    )


def per_class_split(labels: np.ndarray, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
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
