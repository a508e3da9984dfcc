"""Benchmarks as pure data: class lists, shipped class orders, prompt names and task splits (DESIGN §4).

A prepared dataset stores `label` = index into `Benchmark.classes`. Training relabels a class to its
position in `Benchmark.order`, so task t owns order positions [start_t, end_t).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from . import world
from .config import ConfigError, did_you_mean

ALIASES = {"tinyimagenet": "tinyimg", "tiny-imagenet": "tinyimg", "imagenet-r": "imgr", "imagenetr": "imgr",
           "test-bed": "testbed"}
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


def canonical_name(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in BUILDERS:
        raise ConfigError(f"unknown benchmark {name!r}{did_you_mean(key, [*BUILDERS, *ALIASES])}; "
                          f"choose from {', '.join(BUILDERS)}")
    return key


def get(name: str) -> Benchmark:
    return _build(canonical_name(name))


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
        raise ConfigError(f"--inc {inc} does not divide the {n - base} classes after the first task of "
                          f"{benchmark.name} ({n} classes, --base {base}){hint}")
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
    return Benchmark("imgr", tuple(data["wnids"]), tuple(data["names"]), tuple(data["order"]),
                     "axiong/imagenet-r")


def _testbed() -> Benchmark:
    # The world's class names are their own ids; the order is a shipped seeded permutation, so task 0
    # mixes compositions pretraining saw with new ones, as every later task does.
    names = world.class_names()
    return Benchmark("testbed", names, names, tuple(_load_json("testbed_class_order.json")["order"]), None)


def _digits() -> Benchmark:
    return Benchmark("digits", tuple(str(d) for d in range(10)), DIGIT_NAMES, tuple(range(10)), None)


BUILDERS = {"cifar100": _cifar100, "tinyimg": _tinyimg, "imgr": _imgr, "testbed": _testbed, "digits": _digits}
GENERATED = ("testbed", "digits")  # made offline on this machine: `train` prepares them on first use
