"""Benchmarks as pure data: class lists, shipped class orders, prompt names and task splits (DESIGN §4).

A prepared dataset stores `label` = index into `Benchmark.classes`. Training relabels a class to its
position in `Benchmark.order`, so task t owns order positions [start_t, end_t).

Besides the shipped names, a benchmark can be the user's own data: `folder:DIR` or `hf:ID` (a Hugging
Face dataset id, or a local path `datasets.load_dataset` reads). `zocli prepare` records its classes
beside the prepared copy; `from_record` rebuilds the Benchmark from that record alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

from zocli.config import ConfigError, did_you_mean
from zocli.data import testbed

ALIASES = {
    "tinyimagenet": "tinyimg",
    "tiny-imagenet": "tinyimg",
    "imagenet-r": "imgr",
    "imagenetr": "imgr",
    "test-bed": "testbed",
}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Benchmark:
    name: str
    classes: tuple[str, ...]  # canonical ids (CIFAR fine-label names, wnids, digits); label = index here
    names: tuple[str, ...]  # prompt-ready class names, parallel to `classes`
    order: tuple[int, ...]  # class order: the labels of task 0's classes first, and so on
    hub_id: str | None  # Hugging Face dataset used by `zocli prepare` when online

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def prompt_names(self) -> list[str]:
        """Class names in class-order position, the order training labels use."""
        return [self.names[c] for c in self.order]


@dataclass(frozen=True)
class Split:
    """The class-incremental protocol: which order positions each task trains on."""

    sizes: tuple[int, ...]  # classes per task

    @property
    def n_tasks(self) -> int:
        return len(self.sizes)

    def bounds(self, task: int) -> tuple[int, int]:
        """[start, end) of task `task` in class-order positions."""
        start = sum(self.sizes[:task])
        return start, start + self.sizes[task]

    def seen(self, task: int) -> int:
        """Number of classes seen after training `task`."""
        return self.bounds(task)[1]


USER_KINDS = ("folder", "hf")  # benchmarks from the user's data: folder:DIR, hf:ID


def is_user(name: str) -> bool:
    return name.split(":", 1)[0] in USER_KINDS and ":" in name


def canonical_name(name: str) -> str:
    if is_user(name):
        kind, value = name.split(":", 1)
        if not value:
            what = "folder" if kind == "folder" else "dataset"
            raise ConfigError(f"--benchmark {name}: name the {what} after '{kind}:'")
        return name
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in BUILDERS:
        raise ConfigError(
            f"unknown benchmark {name!r}{did_you_mean(key, [*BUILDERS, *ALIASES])}; "
            f"choose from {', '.join(BUILDERS)}, folder:DIR or hf:ID"
        )
    return key


def storage_name(name: str) -> str:
    """The folder of the prepared copy under the data root: the name, or for the user's data a readable
    stem plus a hash of the whole spec (two folders called `train` must not share one copy)."""
    name = canonical_name(name)
    if not is_user(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{short_name(name)}-{digest}"


def short_name(name: str) -> str:
    """A file-name-safe label: `folder-flowers` for folder:/data/flowers, `hf-user-set` for hf:user/set."""
    if not is_user(name):
        return canonical_name(name)
    kind, value = name.split(":", 1)
    local = kind == "folder" or value.startswith("/")  # zocli.resolve makes local paths absolute
    stem = value.rstrip("/").rsplit("/", 1)[-1] if local else value.strip("/").replace("/", "-")
    return f"{kind}-{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:60] or 'data'}"


def get(name: str) -> Benchmark:
    """A shipped benchmark (user benchmarks come from their prepared record: `from_record`)."""
    name = canonical_name(name)
    if is_user(name):
        raise ValueError(f"{name} is the user's data: build it with from_record")
    return _build(name)


def from_record(record: dict) -> Benchmark:
    """The Benchmark `zocli prepare` recorded for folder:DIR or hf:ID: its classes in label order."""
    classes, names = tuple(record["classes"]), tuple(record["names"])
    return Benchmark(record["spec"], classes, names, tuple(range(len(classes))), None)


def reorder(bench: Benchmark, order: str | list) -> Benchmark:
    """`bench` with another class order: `seed:N` (a random.Random(N) permutation of the labels) or a
    list naming every class once, by id (`bench.classes`) or label index."""
    n = bench.n_classes
    if isinstance(order, str):
        return replace(bench, order=tuple(random.Random(int(order.removeprefix("seed:"))).sample(range(n), n)))
    index = {c: i for i, c in enumerate(bench.classes)}
    labels = [
        entry
        if isinstance(entry, int) and not isinstance(entry, bool) and 0 <= entry < n
        else index.get(entry)
        if isinstance(entry, str)
        else None
        for entry in order
    ]
    unknown = [str(entry) for entry, label in zip(order, labels) if label is None]
    if unknown:
        raise ConfigError(
            f"--class-order names {len(unknown)} entries that are not {bench.name} classes "
            f"({', '.join(unknown[:5])}); use class ids such as {bench.classes[0]!r} "
            f"or indices 0..{n - 1}"
        )
    doubled = sorted({bench.classes[c] for c in labels if labels.count(c) > 1})
    missing = [bench.classes[c] for c in range(n) if c not in set(labels)]
    if doubled or missing:
        what = f"repeats {', '.join(doubled[:5])}" if doubled else f"lacks {', '.join(missing[:5])}"
        raise ConfigError(f"--class-order must list each of the {n} classes of {bench.name} once; it {what}")
    return replace(bench, order=tuple(labels))


def split(benchmark: Benchmark, inc: int, base: int | None = None) -> Split:
    """Task sizes for `--inc` / `--base`; a remainder is an error, never silently dropped."""
    n, base = benchmark.n_classes, inc if base is None else base
    if inc <= 0 or base <= 0:
        raise ConfigError("--inc and --base must be positive")
    if base > n:
        raise ConfigError(f"--base {base} is larger than {benchmark.name}'s {n} classes")
    if (n - base) % inc:
        fits = [d for d in range(1, n - base + 1) if (n - base) % d == 0] if n > base else []
        hint = f"; --inc values that fit: {', '.join(map(str, fits))}" if fits else ""
        raise ConfigError(
            f"--inc {inc} does not divide the {n - base} classes after the first task of "
            f"{benchmark.name} ({n} classes, --base {base}){hint}"
        )
    return Split((base,) + (inc,) * ((n - base) // inc))


@cache
def _build(name: str) -> Benchmark:
    return BUILDERS[name]()


def _resource(filename: str):
    return resources.files("zocli") / "resources" / filename


def _load_json(filename: str) -> dict:
    return json.loads(_resource(filename).read_text())


def _cifar100() -> Benchmark:
    classes = tuple(_load_json("cifar100_class_names.json")["names"])
    names = tuple(c.replace("_", " ") for c in classes)
    order = tuple(_load_json("cifar100_class_order.json")["order"])
    return Benchmark("cifar100", classes, names, order, "uoft-cs/cifar100")


def _tinyimg() -> Benchmark:
    rows = [line.split("\t") for line in _resource("tinyimagenet_class_names.tsv").read_text().splitlines()[1:]]
    name_of = {wnid: name.strip() for wnid, name in rows}
    classes = tuple(sorted(name_of))
    order_wnids = _load_json("tinyimagenet_class_order.json")["order"]
    order = tuple(classes.index(w) for w in order_wnids)
    return Benchmark("tinyimg", classes, tuple(name_of[w] for w in classes), order, "zh-plus/tiny-imagenet")


def _imgr() -> Benchmark:
    data = _load_json("imagenet_r_classes.json")
    return Benchmark("imgr", tuple(data["wnids"]), tuple(data["names"]), tuple(data["order"]), "axiong/imagenet-r")


def _testbed() -> Benchmark:
    # The world's class names are their own ids; the order is a shipped seeded permutation, so task 0
    # mixes compositions pretraining saw with new ones, as every later task does.
    names = testbed.class_names()
    return Benchmark("testbed", names, names, tuple(_load_json("testbed_class_order.json")["order"]), None)


def _digits() -> Benchmark:
    return Benchmark("digits", tuple(str(d) for d in range(10)), DIGIT_NAMES, tuple(range(10)), None)


BUILDERS = {"cifar100": _cifar100, "tinyimg": _tinyimg, "imgr": _imgr, "testbed": _testbed, "digits": _digits}
GENERATED = ("testbed", "digits")  # made offline on this machine: `train` prepares them on first use
