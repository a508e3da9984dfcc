"""zocli.data.store and zocli.data.sources: prepare -> load round trips from every kind of source, offline and fast."""

import io
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported: the hub must never be contacted

import shutil
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from zocli.data import catalogue, sources, store, testbed


def _png(path: Path, seed: int, mode: str = "RGB", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).convert(mode).save(path)


def _labels(dd: datasets.DatasetDict, split: str) -> list[int]:
    return list(dd[split]["label"])


# ---------------------------------------------------------------------------------------------- digits


def test_digits_round_trip(tmp_path):
    bench = catalogue.get("digits")
    target = store.prepare(bench, tmp_path)
    assert target == store.dataset_dir(tmp_path, "digits") == tmp_path / "digits"
    dd = store.load(bench, tmp_path)
    assert len(dd["train"]) + len(dd["test"]) == 1797
    assert len(dd["test"]) == 360  # 20 %
    for split in ("train", "test"):
        assert set(_labels(dd, split)) == set(range(10))  # stratified: every class in both splits
        assert dd[split].features["label"].names == list(bench.classes)
    image = dd["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert max(np.asarray(dd["train"][i]["image"]).max() for i in range(20)) > 200  # scaled to 0..255

    mtime = (target / "dataset_dict.json").stat().st_mtime_ns
    assert store.prepare(bench, tmp_path) == target  # idempotent: returned unchanged
    assert (target / "dataset_dict.json").stat().st_mtime_ns == mtime


def test_digits_split_is_fixed(tmp_path):
    bench = catalogue.get("digits")
    a = store.load(bench, store.prepare(bench, tmp_path / "a").parent)
    b = store.load(bench, store.prepare(bench, tmp_path / "b").parent)
    assert _labels(a, "test") == _labels(b, "test")
    assert np.array_equal(np.asarray(a["test"][5]["image"]), np.asarray(b["test"][5]["image"]))


# ---------------------------------------------------------------------------------------------- cifar100


def _cifar_folder(root: Path, classes: list[str]) -> None:
    for s, split in enumerate(("train", "test")):
        for i, c in enumerate(classes):
            for k in range(2):
                _png(root / split / c / f"{k}.png", seed=100 * s + 10 * i + k)


def test_cifar_imagefolder(tmp_path):
    bench = catalogue.get("cifar100")
    chosen = [bench.classes[i] for i in (3, 26, 99)]  # 26 is crab
    _cifar_folder(tmp_path / "src", chosen)
    lines = []
    store.prepare(bench, tmp_path / "root", source=tmp_path / "src", on_progress=lines.append, allow_partial=True)
    shutil.rmtree(tmp_path / "src")  # the copy embeds the image bytes: it must not need the source
    dd = store.load(bench, tmp_path / "root")
    for split in ("train", "test"):
        assert sorted(_labels(dd, split)) == [3, 3, 26, 26, 99, 99]
        assert dd[split][0]["image"].mode == "RGB"
    assert lines and all(isinstance(line, str) for line in lines)


def test_a_partial_source_is_refused_at_prepare(tmp_path):
    # Found: 10 of 100 class folders prepared fine (exit 0), then train died at task 3 with a ValueError.
    bench = catalogue.get("cifar100")
    _cifar_folder(tmp_path / "src", list(bench.classes[:10]))
    with pytest.raises(sources.SourceError, match="no train images for 90 of 100 cifar100 classes") as info:
        store.prepare(bench, tmp_path / "root", source=tmp_path / "src")
    assert "--allow-partial" in str(info.value) and "\n" not in str(info.value)
    assert not store.dataset_dir(tmp_path / "root", "cifar100").exists()


def test_allow_partial_warns_naming_the_missing_classes(tmp_path):
    bench = catalogue.get("cifar100")
    _cifar_folder(tmp_path / "src", list(bench.classes[:10]))
    lines = []
    store.prepare(bench, tmp_path / "root", source=tmp_path / "src", on_progress=lines.append, allow_partial=True)
    warning = next(line for line in lines if line.startswith("warning:"))
    assert "90 of 100" in warning and bench.classes[10] in warning
    assert len(store.load(bench, tmp_path / "root")["test"]) == 20


def test_cifar_unknown_folder(tmp_path):
    bench = catalogue.get("cifar100")
    _cifar_folder(tmp_path / "src", ["apple", "not_a_class"])
    with pytest.raises(sources.SourceError, match="not_a_class"):
        store.prepare(bench, tmp_path / "root", source=tmp_path / "src")
    assert not store.dataset_dir(tmp_path / "root", "cifar100").exists()
    assert list((tmp_path / "root").iterdir()) == []  # the temporary sibling is cleaned up


def test_cifar_saved_hub_copy(tmp_path):
    # A save_to_disk copy with the hub's own columns and its "cra" typo, and a label order that differs.
    bench = catalogue.get("cifar100")
    hub_names = ["cra", "apple", "aquarium_fish"]
    feats = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=hub_names),
            "coarse_label": datasets.Value("int64"),
        }
    )
    pixels = [np.zeros((4, 4, 3), np.uint8)] * 3
    split = datasets.Dataset.from_dict(
        {"img": pixels, "fine_label": [0, 1, 2], "coarse_label": [0, 0, 0]}, features=feats
    )
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "src"))
    store.prepare(bench, tmp_path / "root", source=tmp_path / "src", allow_partial=True)
    dd = store.load(bench, tmp_path / "root")
    assert _labels(dd, "train") == [bench.classes.index("crab"), 0, 1]
    assert dd["train"].column_names == ["image", "label"]


# ---------------------------------------------------------------------------------------------- tinyimg


def _tiny_layout(root: Path, wnids: list[str]) -> None:
    for i, w in enumerate(wnids):
        for k in range(3):
            _png(root / "train" / w / "images" / f"{w}_{k}.JPEG", seed=10 * i + k)
    rows = []
    for k, w in enumerate(wnids * 2):
        _png(root / "val" / "images" / f"val_{k}.JPEG", seed=100 + k, mode="L" if k == 0 else "RGB")
        rows.append(f"val_{k}.JPEG\t{w}\t0\t0\t8\t8")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_tinyimg_official_layout(tmp_path):
    bench = catalogue.get("tinyimg")
    wnids = [bench.classes[5], bench.classes[150]]
    _tiny_layout(tmp_path / "src" / "tiny-imagenet-200", wnids)
    # the parent of tiny-imagenet-200/ is accepted too
    store.prepare(bench, tmp_path / "root", source=tmp_path / "src", allow_partial=True)
    dd = store.load(bench, tmp_path / "root")
    assert sorted(_labels(dd, "train")) == [5, 5, 5, 150, 150, 150]
    assert _labels(dd, "test") == [5, 150, 5, 150]
    assert all(dd["test"][i]["image"].mode == "RGB" for i in range(4))  # the grayscale one was converted


def test_tinyimg_hub_path(tmp_path, monkeypatch):
    # The online path with load_dataset faked: `valid` becomes `test`, wnid labels are remapped by name.
    bench = catalogue.get("tinyimg")
    hub_names = [bench.classes[7], bench.classes[2]]  # not in our order
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=hub_names)})
    gray = PIL.Image.fromarray(np.zeros((4, 4), np.uint8))
    split = datasets.Dataset.from_dict({"image": [gray, gray], "label": [0, 1]}, features=feats)
    fake = datasets.DatasetDict({"train": split, "valid": split.select([1])})
    monkeypatch.setattr(sources.datasets, "load_dataset", lambda *a, **k: fake)
    store.prepare(bench, tmp_path, allow_partial=True)
    dd = store.load(bench, tmp_path)
    assert _labels(dd, "train") == [7, 2] and _labels(dd, "test") == [2]
    assert dd["train"][0]["image"].mode == "RGB"


# ---------------------------------------------------------------------------------------------- imgr


def _imgr_folder(root: Path, wnids: list[str], n: int = 10) -> None:
    for i, w in enumerate(wnids):
        for k in range(n):
            _png(root / w / f"img_{k:02d}.jpg", seed=1000 * i + k)


def _fingerprints(ds: datasets.Dataset) -> list[bytes]:
    return [np.asarray(row["image"]).tobytes() for row in ds]


def test_imgr_folder_split(tmp_path):
    bench = catalogue.get("imgr")
    wnids = [bench.classes[0], bench.classes[42]]
    _imgr_folder(tmp_path / "src" / "imagenet-r", wnids)
    root = tmp_path / "root"
    store.prepare(bench, root, source=tmp_path / "src", allow_partial=True)
    first = store.load(bench, root)
    assert sorted(_labels(first, "train")) == [0] * 8 + [42] * 8
    assert sorted(_labels(first, "test")) == [0] * 2 + [42] * 2
    train, test = _fingerprints(first["train"]), _fingerprints(first["test"])
    assert not set(train) & set(test)
    store.prepare(bench, root, source=tmp_path / "src" / "imagenet-r", overwrite=True, allow_partial=True)
    second = store.load(bench, root)
    assert _fingerprints(second["train"]) == train and _fingerprints(second["test"]) == test


def test_imgr_hub_path(tmp_path, monkeypatch):
    bench = catalogue.get("imgr")
    wnids = [bench.classes[9]] * 5 + [bench.classes[1]] * 5
    rows = datasets.Dataset.from_dict(
        {"image": [np.zeros((4, 4, 3), np.uint8)] * 10, "wnid": wnids, "class_name": ["x"] * 10},
        features=datasets.Features(
            {"image": datasets.Image(), "wnid": datasets.Value("string"), "class_name": datasets.Value("string")}
        ),
    )
    calls = []
    monkeypatch.setattr(sources.datasets, "load_dataset", lambda *a, **k: calls.append(k) or rows)
    store.prepare(bench, tmp_path, allow_partial=True)
    dd = store.load(bench, tmp_path)
    assert calls == [{"revision": None, "split": "test"}]
    assert sorted(_labels(dd, "train")) == [1] * 4 + [9] * 4 and sorted(_labels(dd, "test")) == [1, 9]


def test_per_class_split_is_deterministic():
    labels = np.array([0] * 10 + [1] * 5)
    a, b = sources.per_class_split(labels), sources.per_class_split(labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(a[0]) == 12 and len(a[1]) == 3
    assert not set(a[0]) & set(a[1])


# ---------------------------------------------------------------------------------------------- errors


def test_load_missing(tmp_path):
    with pytest.raises(store.DataMissing, match="zocli prepare --benchmark cifar100") as info:
        store.load(catalogue.get("cifar100"), tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def test_load_stale_classes(tmp_path):
    # A copy prepared for another class list (e.g. an older zocli) must be re-prepared.
    bench = catalogue.get("digits")
    store.prepare(bench, tmp_path)
    renamed = catalogue.Benchmark("digits", tuple("abcdefghij"), bench.names, bench.order, None)
    with pytest.raises(store.DataMissing, match="--overwrite"):
        store.load(renamed, tmp_path)


def test_online_fails_fast_offline(tmp_path):
    start = time.monotonic()
    with pytest.raises(sources.SourceError, match="--source") as info:
        store.prepare(catalogue.get("cifar100"), tmp_path)
    assert time.monotonic() - start < 10
    assert "\n" not in str(info.value)
    assert not store.dataset_dir(tmp_path, "cifar100").exists()


def test_bad_source(tmp_path):
    with pytest.raises(sources.SourceError, match="tiny-imagenet-200"):
        store.prepare(catalogue.get("tinyimg"), tmp_path / "root", source=tmp_path)
    with pytest.raises(sources.SourceError, match="not a directory"):
        store.prepare(catalogue.get("imgr"), tmp_path / "root", source=tmp_path / "missing")


def test_interrupted_write_is_ignored(tmp_path):
    # A killed prepare leaves only a hidden temporary sibling, possibly holding a complete-looking copy.
    bench = catalogue.get("digits")
    store.prepare(bench, tmp_path / "done")
    leftover = tmp_path / "root" / ".digits.tmp-killed" / "out"
    leftover.parent.mkdir(parents=True)
    os.replace(store.dataset_dir(tmp_path / "done", "digits"), leftover)
    with pytest.raises(store.DataMissing):
        store.load(bench, tmp_path / "root")
    # and the next prepare still writes the real copy
    store.prepare(bench, tmp_path / "root")
    assert len(store.load(bench, tmp_path / "root")["test"]) == 360


def test_overwrite_replaces(tmp_path):
    bench = catalogue.get("digits")
    target = store.prepare(bench, tmp_path)
    (target / "marker").write_text("old")
    assert store.prepare(bench, tmp_path, overwrite=True) == target
    assert not (target / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no temporary left behind


def test_testbed_is_generated_offline_complete_and_disjoint(testbed_root):
    bench = catalogue.get("testbed")
    dd = store.load(bench, testbed_root)
    for split, per_class in sources.TESTBED_PER_CLASS.items():
        assert sorted(Counter(dd[split]["label"]).items()) == [(c, per_class) for c in range(100)]
    pixels = {split: {np.asarray(im).tobytes() for im in dd[split]["image"]} for split in ("train", "test")}
    assert len(pixels["train"]) == 6000 and len(pixels["test"]) == 2000  # no duplicate image anywhere
    assert not pixels["train"] & pixels["test"]  # no test image is also a training image


def test_testbed_rows_are_the_worlds_seeded_draws(testbed_root):
    # Every copy is the same: row (label, index) is testbed.render(label, seed (0, split, label, index)).
    dd = store.load(catalogue.get("testbed"), testbed_root)
    for split, split_id in (("train", 0), ("test", 1)):
        per_class = sources.TESTBED_PER_CLASS[split]
        for row in (0, per_class + 3, len(dd[split]) - 1):
            label, index = divmod(row, per_class)
            expected = testbed.render(label, "benchmark", (sources.TESTBED_SEED, split_id, label, index))
            assert dd[split][row]["label"] == label
            assert np.array_equal(np.asarray(dd[split][row]["image"]), expected)


def test_testbed_takes_no_source(tmp_path):
    with pytest.raises(sources.SourceError, match="made on this machine"):
        store.prepare(catalogue.get("testbed"), tmp_path, source=tmp_path)


DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no process has it


def _dead_prepare_left(tmp_path, kept: str) -> Path:
    """A digits root whose prepare died mid-swap, its one copy at TMP/`kept` ("ready" or "old")."""
    store.prepare(catalogue.get("digits"), tmp_path / "done")
    tmp = tmp_path / "root" / f".digits.tmp-{DEAD_PID}-abcd"
    tmp.mkdir(parents=True)
    os.replace(store.dataset_dir(tmp_path / "done", "digits"), tmp / kept)
    assert not store.dataset_dir(tmp_path / "root", "digits").exists()  # the benchmark is missing
    return tmp


def test_a_prepare_killed_between_its_renames_is_finished_by_the_next_load(tmp_path):
    tmp = _dead_prepare_left(tmp_path, "ready")  # killed after the old copy moved aside, before the new moved in
    assert len(store.load(catalogue.get("digits"), tmp_path / "root")["test"]) == 360  # the swap was finished
    assert not tmp.exists()


def test_a_dead_prepare_with_only_the_old_copy_is_rolled_back(tmp_path):
    tmp = _dead_prepare_left(tmp_path, "old")
    store.prepare(catalogue.get("digits"), tmp_path / "root")  # finds the old copy back instead of rebuilding
    assert len(store.load(catalogue.get("digits"), tmp_path / "root")["train"]) == 1437 and not tmp.exists()


def test_a_live_prepares_temporary_directory_is_left_alone(tmp_path):
    bench = catalogue.get("digits")
    live = tmp_path / f".digits.tmp-{os.getpid()}-abcd"
    (live / "work").mkdir(parents=True)
    store.prepare(bench, tmp_path)
    assert live.is_dir() and len(store.load(bench, tmp_path)["test"]) == 360


def test_large_photos_are_stored_pre_resized_for_imgr():
    """imgr's prepared copy holds each photo with its shorter side at PRESIZE (a small JPEG a worker
    decodes fast); smaller images, and other benchmarks, are kept as they came."""

    def encoded(size, mode="RGB", fmt="PNG") -> dict:
        buffer = io.BytesIO()
        PIL.Image.new(mode, size, 90).save(buffer, format=fmt)
        return {"bytes": buffer.getvalue(), "path": None}

    big, small = encoded((900, 600)), encoded((200, 150))
    shrunk = sources._rgb(big, sources.PRESIZE)
    with PIL.Image.open(io.BytesIO(shrunk["bytes"])) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (384, 256), "RGB")
    assert sources._rgb(small, sources.PRESIZE) is small and sources._rgb(big) is big  # nothing to shrink; not imgr
    with PIL.Image.open(io.BytesIO(sources._rgb(encoded((200, 150), "L"), sources.PRESIZE)["bytes"])) as im:
        assert (im.format, im.mode) == ("PNG", "RGB")  # small grayscale: converted losslessly, not shrunk


def test_a_revision_reaches_the_hub_loader(monkeypatch, tmp_path):
    from zocli.errors import ZocliError

    asked = {}

    def load_dataset(repo, **kwargs):
        asked.update(kwargs, repo=repo)
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(sources.datasets, "load_dataset", load_dataset)
    with pytest.raises(ZocliError):
        store.prepare(catalogue.get("cifar100"), tmp_path, revision="0123abc")
    assert asked == {"repo": "uoft-cs/cifar100", "revision": "0123abc"}
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_revision_applies_to_hub_sources_only(tmp_path):
    from zocli.data.sources import SourceError

    with pytest.raises(SourceError, match="--revision pins a Hugging Face hub source"):
        store.prepare(catalogue.get("digits"), tmp_path, revision="main")
    with pytest.raises(SourceError, match="--revision"):
        store.prepare(catalogue.get("cifar100"), tmp_path, source=tmp_path, revision="main")


def test_the_source_record_keeps_the_revision(tmp_path):
    store.record_source(tmp_path, "uoft-cs/cifar100", "0123abc")
    record = json.loads((tmp_path / store.SOURCE_RECORD).read_text())
    assert record["source"] == "uoft-cs/cifar100" and record["revision"] == "0123abc"
    store.record_source(tmp_path, "generated (digits)", None)
    assert json.loads((tmp_path / store.SOURCE_RECORD).read_text())["revision"].startswith("content sha256 ")
