"""The user's own data as a benchmark: `folder:DIR` and `hf:ID`, prepared into the same normalized copy.

- `folder:DIR`: `DIR/train/<class>/*` and `DIR/test/<class>/*`, or one `DIR/<class>/*` split per class
  80/20 (seed 1993, the ImageNet-R split) when it is prepared. Hidden files are ignored; anything else
  that is not an image is refused.
- `hf:ID`: a Hugging Face dataset id, or a local path that `datasets.load_dataset` reads (parquet,
  csv or imagefolder files) or a `save_to_disk` copy. Columns and splits are found or given
  (`SourceOptions`); with no test split the train split is split per class like a single folder.

Classes are sorted folder names, or the dataset's label names (or its sorted label values); prompt
names are those with underscores as spaces, unless a names file says otherwise. The copy is written
like a shipped benchmark's (`data.prepare`), with `preflight.RECORD` beside it holding the spec,
classes and names, so `train` and `eval` rebuild the Benchmark from the prepared copy alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from zocli.config import ConfigError, did_you_mean
from zocli.data import dirswap, fingerprint, hub
from zocli.data.catalogue import Benchmark, canonical_name, from_record
from zocli.data.location import RECORD, dataset_dir
from zocli.data.sources import IMAGE_SUFFIXES, SPLIT_SEED, Progress, SourceError, normalize, per_class_split
from zocli.data.store import class_counts, needs_writing, progress_or_quiet, record_source

TEST_SPLITS = ("test", "validation", "valid", "val")  # tried in this order when --test-split is not given
FOLDER_LAYOUT = "DIR/train/<class>/*.png and DIR/test/<class>/*.png, or DIR/<class>/*.png (split 80/20 per class)"


@dataclass(frozen=True)
class SourceOptions:
    image_column: str | None = None  # None: the dataset's only Image column
    label_column: str | None = None  # None: its only ClassLabel column, else `label`
    train_split: str = "train"
    test_split: str | None = None  # None: the first of TEST_SPLITS present, else a seeded per-class split
    names: Path | None = None  # JSON: {class: prompt name} or a list parallel to the sorted classes
    revision: str | None = None  # hf:ID on the hub: the commit, branch or tag to read (recorded)


def prepare(
    spec: str,
    data_root: Path,
    options: SourceOptions = SourceOptions(),
    on_progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the normalized copy of folder:DIR or hf:ID under `data_root`; return its directory.

    Idempotent like `data.prepare`: an existing copy is returned unchanged unless `overwrite`."""
    spec = canonical_name(spec)
    target = dataset_dir(data_root, spec)
    if not needs_writing(target, overwrite):
        return target
    progress = progress_or_quiet(on_progress)
    kind, where = spec.split(":", 1)
    with dirswap.staging(target) as tmp:
        read = _read_folder if kind == "folder" else _read_hf
        rows, classes, how = read(where, options, progress)
        bench = from_record({"spec": spec, "classes": classes, "names": _names(classes, options.names)})
        dd = _normalized(bench, rows, tmp / "work", progress)
        progress(
            f"writing {len(dd['train'])} train + {len(dd['test'])} test images of {bench.n_classes} classes to {target}"
        )
        dd.save_to_disk(str(tmp / "out"))
        record = {"format": 1, "spec": spec, "classes": list(bench.classes), "names": list(bench.names), "split": how}
        (tmp / "out" / RECORD).write_text(json.dumps(record, indent=1))
        fingerprint.write(tmp / "out", fingerprint.of_dataset(tmp / "out", list(bench.classes), dd))
        del dd  # drop the memory maps on tmp/work before it is deleted
        revision = hub.last_revision(where) or options.revision if kind == "hf" else None
        record_source(tmp / "out", spec, revision)
        dirswap.swap_in(tmp, tmp / "out", target)
    return target


# Each reader returns ({"train": (dataset, image column, label column, lookup), "test": ...}, classes, how).


def _read_folder(where: str, options: SourceOptions, progress: Progress):
    root = Path(where)
    if options != SourceOptions(names=options.names):
        raise ConfigError(
            "--image-column, --label-column, --train-split, --test-split and --revision apply to hf:ID only"
        )
    if not root.is_dir():
        raise SourceError(f"folder:{root} is not a directory; expected {FOLDER_LAYOUT}")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise SourceError(f"{root} has train/ but no test/ folder; expected {FOLDER_LAYOUT}")
        train, test = _class_files(root / "train"), _class_files(root / "test")
        lacking = sorted(set(train) - set(test))
        extra = sorted(set(test) - set(train))
        if lacking or extra:
            raise SourceError(
                f"{root / 'test'} lacks class folder(s) {', '.join(lacking[:5])} that train/ has: every "
                f"class needs test images"
                if lacking
                else f"{root / 'test'} has class folder(s) {', '.join(extra[:5])} that train/ lacks"
            )
        classes, how = sorted(train), "train/ and test/ folders"
        files = {"train": train, "test": test}
    else:
        found = _class_files(root)
        classes, how = sorted(found), f"one folder, split 80/20 per class (seed {SPLIT_SEED})"
        files = _split_files(found, classes)
    _check_count(classes, str(root))
    index = {c: i for i, c in enumerate(classes)}
    rows = {}
    for split, per_class in files.items():
        paths = [str(f) for c in classes for f in per_class[c]]
        labels = [index[c] for c in classes for _ in per_class[c]]
        progress(f"{root}: {len(paths)} {split} images of {len(classes)} classes")
        ds = Dataset.from_dict(
            {"image": paths, "label": labels},
            features=Features({"image": Image(decode=False), "label": Value("int64")}),
        )
        rows[split] = (ds, "image", "label", None)
    return rows, classes, how


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class folder name: its image files}; anything but class folders of images is an error."""
    out = {}
    for entry in _visible(folder):
        if not _utf8(entry.name):
            raise SourceError(
                f"class folder {os.fsdecode(entry)!a} has a name that is not UTF-8: class names become "
                f"prompts and JSON records; rename it"
            )
        if not entry.is_dir():
            raise SourceError(f"{entry} is a file where class folders are expected; expected {FOLDER_LAYOUT}")
        images = []
        for file in _visible(entry):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES))
                raise SourceError(f"{file} is not an image ({kinds}); move it out of {entry}")
            images.append(file)
        if not images:
            raise SourceError(f"class folder {entry} has no images; remove it or add its images")
        out[entry.name] = images
    if not out:
        raise SourceError(f"{folder} has no class folders; expected {FOLDER_LAYOUT}")
    return out


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates (PEP 383)
        return False
    return True


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _split_files(found: dict[str, list[Path]], classes: list[str]) -> dict[str, dict[str, list[Path]]]:
    labels = np.repeat(np.arange(len(classes)), [len(found[c]) for c in classes])
    files = [f for c in classes for f in found[c]]
    train, test = per_class_split(labels)
    out = {"train": {c: [] for c in classes}, "test": {c: [] for c in classes}}
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            out[split][classes[labels[row]]].append(files[row])
    _check_split(out, "the 80/20 split")
    return out


def _read_hf(where: str, options: SourceOptions, progress: Progress):
    dd = _load(where, progress, options.revision)
    splits = list(dd)
    train = _choose(options.train_split, splits, "--train-split", f"hf:{where}")
    test = options.test_split or next((s for s in TEST_SPLITS if s in splits), None)
    if test is not None:
        _choose(test, splits, "--test-split", f"hf:{where}")
    features = dd[train].features
    image_col = options.image_column or _only(features, Image, "Image", "--image-column", where)
    label_col = options.label_column or _label_guess(features, where)
    for column, flag in ((image_col, "--image-column"), (label_col, "--label-column")):
        _choose(column, list(features), flag, f"hf:{where} split {train}")
    label = features[label_col]
    if isinstance(label, ClassLabel):
        classes, lookup = list(label.names), None
    else:
        values = sorted({v for s in {train, test} - {None} for v in dd[s][label_col]})
        classes, lookup = [str(v) for v in values], {v: i for i, v in enumerate(values)}
    _check_count(classes, f"hf:{where}")
    if test is None:
        labels = np.asarray(dd[train][label_col] if lookup is None else [lookup[v] for v in dd[train][label_col]])
        rows_train, rows_test = per_class_split(labels)
        parts = {"train": dd[train].select(rows_train), "test": dd[train].select(rows_test)}
        how = f"split {train!r} split 80/20 per class (seed {SPLIT_SEED})"
    else:
        parts, how = {"train": dd[train], "test": dd[test]}, f"splits {train!r} and {test!r}"
        if (
            lookup is None
            and isinstance(dd[test].features.get(label_col), ClassLabel)
            and dd[test].features[label_col].names != classes
        ):
            raise SourceError(f"hf:{where}: split {test!r} names its classes differently from {train!r}")
    progress(f"hf:{where}: {how}, columns {image_col!r} and {label_col!r}, {len(classes)} classes")
    return {s: (ds, image_col, label_col, lookup) for s, ds in parts.items()}, classes, how


def _load(where: str, progress: Progress, revision: str | None = None) -> DatasetDict:
    path = Path(where)
    if revision is not None and path.exists():
        raise ConfigError(f"--revision pins a Hugging Face hub dataset; hf:{where} is a local path")
    try:
        if (path / "dataset_dict.json").is_file():
            progress(f"reading the saved dataset {path}")
            dd = datasets.load_from_disk(str(path))
        elif path.exists():
            progress(f"reading {path} with datasets.load_dataset")
            dd = datasets.load_dataset(str(path))
        else:
            with hub.offline_unless_reachable() as online:
                progress(
                    f"loading {where} from the Hugging Face hub"
                    if online
                    else f"the Hugging Face hub is unreachable: looking for {where} in its local cache"
                )
                dd = datasets.load_dataset(where, revision=revision)
                if online:
                    hub.note_revision(where, revision)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise SourceError(f"cannot load hf:{where} ({type(exc).__name__}: {reason})") from None
    if not isinstance(dd, DatasetDict):
        raise SourceError(f"hf:{where} is a single split; it needs named splits (train, and test or none)")
    return dd


def _choose(value: str, options: list[str], flag: str, where: str) -> str:
    if value not in options:
        raise ConfigError(
            f"{flag} {value!r} is not in {where}{did_you_mean(value, options)}; it has {', '.join(options)}"
        )
    return value


def _only(features: Features, kind: type, what: str, flag: str, where: str) -> str:
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        listed = ", ".join(found) or "it has " + ", ".join(features)
        raise ConfigError(f"hf:{where} has {len(found) or 'no'} {what} columns ({listed}); name the column with {flag}")
    return found[0]


def _label_guess(features: Features, where: str) -> str:
    labels = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
    if len(labels) == 1:
        return labels[0]
    if "label" in features:
        return "label"
    return _only(features, ClassLabel, "ClassLabel", "--label-column", where)


# shared by both sources


def _names(classes: list[str], names_file: Path | None) -> list[str]:
    names = [c.replace("_", " ") for c in classes]
    if names_file is None:
        return names
    try:
        given = json.loads(Path(names_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--names {names_file}: not a readable JSON file ({exc})") from None
    if isinstance(given, list):
        if len(given) != len(classes) or not all(isinstance(n, str) for n in given):
            raise ConfigError(
                f"--names {names_file}: a list must give {len(classes)} names, one per class in "
                f"sorted order ({', '.join(classes[:3])}, ...)"
            )
        return given
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise ConfigError(f"--names {names_file} must hold {{class: name}} or a list of names")
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ConfigError(f"--names {names_file} names {', '.join(unknown[:5])}, which are not classes here")
    return [given.get(c, n) for c, n in zip(classes, names)]


def _check_count(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        raise SourceError(
            f"{where} has {len(classes)} class{'es' if not classes else ''} "
            f"({', '.join(classes)}); a class-incremental benchmark needs at least 2"
        )


def _check_split(files: dict[str, dict[str, list]], what: str) -> None:
    for split, per_class in files.items():
        empty = [c for c, f in per_class.items() if not f]
        if empty:
            raise SourceError(
                f"{what} leaves class(es) {', '.join(empty[:5])} without {split} images: "
                f"give each class at least 3 images, or train/ and test/ folders"
            )


def _normalized(bench: Benchmark, rows: dict, work: Path, progress: Progress) -> DatasetDict:
    out = {}
    for split, (ds, image_col, label_col, lookup) in rows.items():
        progress(f"normalizing {split} ({len(ds)} images)")
        out[split] = normalize(ds, bench, image_col, label_col, lookup, work / f"{split}.arrow")
    for split, ds in out.items():
        empty = [bench.classes[i] for i in np.flatnonzero(class_counts(bench, ds) == 0)]
        if empty:
            raise SourceError(
                f"{bench.name} has no {split} images for class(es) {', '.join(empty[:5])}: every class "
                f"needs train and test images"
            )
    return DatasetDict(out)
