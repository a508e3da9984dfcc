"""zocli.data.catalogue: shipped orders and names, and task splits that are disjoint, complete and in order."""

import json
from importlib import resources

import numpy as np
import pytest

from zocli.config import ConfigError
from zocli.data import catalogue

N_CLASSES = {"cifar100": 100, "tinyimg": 200, "imgr": 200, "testbed": 100, "digits": 10}
VALID_SPLITS = [
    ("cifar100", 10, None),
    ("cifar100", 5, None),
    ("cifar100", 20, None),
    ("cifar100", 2, None),
    ("cifar100", 10, 50),
    ("cifar100", 5, 50),
    ("tinyimg", 10, 100),
    ("tinyimg", 20, 100),
    ("tinyimg", 5, 100),
    ("tinyimg", 20, None),
    ("imgr", 20, None),
    ("imgr", 10, None),
    ("imgr", 50, 100),
    ("testbed", 10, None),
    ("testbed", 20, None),
    ("testbed", 10, 50),
    ("digits", 2, None),
    ("digits", 5, None),
    ("digits", 1, None),
    ("digits", 2, 4),
    ("digits", 10, None),
]


def _resource_json(name: str) -> dict:
    return json.loads((resources.files("zocli") / "resources" / name).read_text())


@pytest.mark.parametrize(("name", "inc", "base"), VALID_SPLITS)
def test_tasks_are_disjoint_complete_and_follow_the_order(name, inc, base):
    bench = catalogue.get(name)
    split = catalogue.split(bench, inc, base)
    base = inc if base is None else base
    assert split.sizes[0] == base and all(size == inc for size in split.sizes[1:])
    tasks = [bench.order[slice(*split.bounds(t))] for t in range(split.n_tasks)]
    flat = [c for task in tasks for c in task]
    assert len(flat) == len(set(flat)) == bench.n_classes  # disjoint, and every class in some task
    assert set(flat) == set(range(bench.n_classes))
    assert tuple(tasks[0]) == bench.order[:base]  # task 0 = the first `base` entries of the order
    assert tuple(flat) == bench.order  # and then `inc` at a time, in order
    assert [split.seen(t) for t in range(split.n_tasks)] == [base + inc * t for t in range(split.n_tasks)]
    assert split.seen(split.n_tasks - 1) == bench.n_classes


@pytest.mark.parametrize("name", sorted(N_CLASSES))
def test_shipped_orders_are_permutations(name):
    bench = catalogue.get(name)
    assert bench.n_classes == N_CLASSES[name] == len(bench.names)
    assert sorted(bench.order) == list(range(bench.n_classes))
    assert len(set(bench.classes)) == bench.n_classes
    assert all(n.strip() == n and n for n in bench.names)
    prompts = bench.prompt_names()
    assert prompts == [bench.names[c] for c in bench.order]


def test_cifar100_order_and_names():
    bench = catalogue.get("cifar100")
    assert list(bench.order) == _resource_json("cifar100_class_order.json")["order"]
    assert bench.order[:4] == (87, 0, 52, 58)  # MoE-Adapters4CL / DyTox order starts television, apple, ...
    assert not any("_" in n for n in bench.names)
    assert "crab" in bench.names and "cra" not in bench.names
    assert "aquarium fish" in bench.names and "maple tree" in bench.names
    assert bench.names[0] == "apple" and bench.names[26] == "crab"


def test_tinyimg_order_and_names_come_from_the_shipped_files():
    bench = catalogue.get("tinyimg")
    rows = (resources.files("zocli") / "resources" / "tinyimagenet_class_names.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["wnid", "name"]
    name_of = dict(line.split("\t") for line in rows[1:])
    assert set(bench.classes) == set(name_of) and len(name_of) == 200
    assert all(bench.names[i] == name_of[wnid].strip() for i, wnid in enumerate(bench.classes))
    order = _resource_json("tinyimagenet_class_order.json")["order"]
    assert [bench.classes[c] for c in bench.order] == order


def test_imgr_order_is_the_1993_permutation_of_sorted_wnids():
    bench = catalogue.get("imgr")
    assert list(bench.classes) == sorted(bench.classes)
    assert all(w.startswith("n") and len(w) == 9 for w in bench.classes)
    assert list(bench.order) == np.random.RandomState(1993).permutation(200).tolist()
    assert not any("_" in n for n in bench.names)


def test_digits_names_and_identity_order():
    bench = catalogue.get("digits")
    assert bench.names == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert bench.order == tuple(range(10))


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("tinyimagenet", "tinyimg"), ("imagenet-r", "imgr"), ("CIFAR100", "cifar100"), ("Digits", "digits")],
)
def test_aliases(alias, canonical):
    assert catalogue.canonical_name(alias) == canonical
    assert catalogue.get(alias) == catalogue.get(canonical)


@pytest.mark.parametrize(
    ("name", "inc", "base"),
    [
        ("cifar100", 3, None),
        ("cifar100", 7, 10),
        ("digits", 3, None),
        ("digits", 4, 4),
        ("tinyimg", 30, 100),
        ("imgr", 15, None),
    ],
)
def test_a_remainder_is_an_error(name, inc, base):
    with pytest.raises(ConfigError) as info:
        catalogue.split(catalogue.get(name), inc, base)
    assert f"--inc {inc}" in str(info.value)


@pytest.mark.parametrize(("name", "inc", "base"), [("cifar100", 10, 110), ("digits", 2, 11), ("digits", 20, None)])
def test_base_larger_than_the_benchmark_is_an_error(name, inc, base):
    with pytest.raises(ConfigError):
        catalogue.split(catalogue.get(name), inc, base)


def test_unknown_benchmark_suggests_a_close_name():
    with pytest.raises(ConfigError) as info:
        catalogue.get("cifar10")
    assert "did you mean 'cifar100'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        catalogue.get("tinyimgnet")
    assert "did you mean" in str(info.value)


def test_testbed_order_is_the_documented_seeded_permutation():
    bench = catalogue.get("test-bed")
    assert bench.name == "testbed" and bench.names == bench.classes  # names are read by the text tower
    assert list(bench.order) == np.random.RandomState(1993).permutation(100).tolist()
