"""zocli.method.plan: which (branch, 1-based layer) units are zeroth-order, table-driven."""

from __future__ import annotations

import itertools

import pytest

from zocli.config import ConfigError
from zocli.method.plan import describe, zo_layers, zo_units
from zocli.resolve import resolve

SCHEMES = ("all", "hop-odd", "hop-even", "prefix", "suffix")

# Expected ZO layers of one ZO tower, written out by hand (not computed by the rule under test).
EXPECTED = {
    12: {
        ("all", None): [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ("hop-odd", None): [1, 3, 5, 7, 9, 11],
        ("hop-even", None): [2, 4, 6, 8, 10, 12],
        ("prefix", None): [1, 2, 3, 4, 5, 6],  # Prefix(six)
        ("suffix", None): [7, 8, 9, 10, 11, 12],  # Suffix(six)
        ("prefix", 3): [1, 2, 3],
        ("suffix", 3): [10, 11, 12],
        ("prefix", 1): [1],
        ("suffix", 1): [12],
        ("prefix", 12): list(range(1, 13)),
        ("suffix", 12): list(range(1, 13)),
    },
    4: {
        ("all", None): [1, 2, 3, 4],
        ("hop-odd", None): [1, 3],
        ("hop-even", None): [2, 4],
        ("prefix", None): [1, 2],
        ("suffix", None): [3, 4],
        ("prefix", 3): [1, 2, 3],
        ("suffix", 3): [2, 3, 4],
        ("prefix", 1): [1],
        ("suffix", 1): [4],
        ("prefix", 4): [1, 2, 3, 4],
        ("suffix", 4): [1, 2, 3, 4],
    },
}


def _cases():
    for depth, table in EXPECTED.items():
        for (scheme, n), layers in table.items():
            for vision, language in itertools.product(("fo", "zo"), repeat=2):
                yield pytest.param(
                    depth,
                    scheme,
                    n,
                    vision,
                    language,
                    layers,
                    id=f"d{depth}-{scheme}{'' if n is None else n}-v{vision}-l{language}",
                )


def _config(**flags):
    return resolve([], flags).config


@pytest.mark.parametrize(("depth", "scheme", "n", "vision", "language", "layers"), list(_cases()))
def test_zo_units_table(depth, scheme, n, vision, language, layers):
    flags = {"vision": vision, "language": language, "layers": scheme, "layers_n": n}
    zo_branches = [b for b, mode in (("vision", vision), ("language", language)) if mode == "zo"]
    if scheme != "all" and not zo_branches:
        with pytest.raises(ConfigError, match="no branch is ZO"):
            _config(**flags)
        return
    cfg = _config(**flags)
    units = zo_units(cfg, {"vision": depth, "language": depth})
    expected = {(branch, k) for branch in zo_branches for k in layers}
    assert units == frozenset(expected)
    # the FO branch keeps every layer FO; the plan as checkpoints record it
    assert describe(units, {"vision": depth, "language": depth}) == {
        b: (sorted(layers) if b in zo_branches else []) for b in ("vision", "language")
    }


def test_layer_numbers_are_one_based():
    assert zo_layers("hop-odd", 12) == (1, 3, 5, 7, 9, 11)
    assert zo_layers("hop-even", 12) == (2, 4, 6, 8, 10, 12)
    assert zo_layers("prefix", 12) == (1, 2, 3, 4, 5, 6)
    assert zo_layers("suffix", 12) == (7, 8, 9, 10, 11, 12)
    assert 0 not in zo_layers("all", 12) and 12 in zo_layers("all", 12)


def test_hop_schemes_partition_and_prefix_suffix_complement():
    for depth in (4, 5, 12):
        odd, even = set(zo_layers("hop-odd", depth)), set(zo_layers("hop-even", depth))
        assert odd | even == set(range(1, depth + 1)) and not odd & even
        for n in range(1, depth + 1):
            prefix, suffix = set(zo_layers("prefix", depth, n)), set(zo_layers("suffix", depth, n))
            assert len(prefix) == len(suffix) == n
            assert prefix == set(range(1, n + 1)) and suffix == set(range(depth - n + 1, depth + 1))


def test_unequal_tower_depths():
    cfg = _config(vision="zo", language="zo", layers="suffix", layers_n=2)
    units = zo_units(cfg, {"vision": 12, "language": 4})
    assert units == {("vision", 11), ("vision", 12), ("language", 3), ("language", 4)}
    cfg = _config(vision="zo", language="zo", layers="prefix")  # default n = half of *each* tower
    assert zo_units(cfg, {"vision": 12, "language": 4}) == (
        {("vision", k) for k in range(1, 7)} | {("language", 1), ("language", 2)}
    )


@pytest.mark.parametrize("scheme", ["prefix", "suffix"])
@pytest.mark.parametrize(("depth", "n"), [(12, 13), (4, 5), (4, 100)])
def test_layers_n_larger_than_the_tower_raises(scheme, depth, n):
    cfg = _config(vision="zo", layers=scheme, layers_n=n)  # the config cannot know the depth yet
    with pytest.raises(ConfigError, match="layers-n"):
        zo_units(cfg, {"vision": depth, "language": depth})


@pytest.mark.parametrize("n", [0, -1])
def test_layers_n_not_positive_raises(n):
    with pytest.raises(ConfigError):
        _config(vision="zo", layers="prefix", layers_n=n)


@pytest.mark.parametrize("scheme", ["all", "hop-odd", "hop-even"])
def test_layers_n_only_for_prefix_suffix(scheme):
    with pytest.raises(ConfigError, match="layers-n"):
        _config(vision="zo", layers=scheme, layers_n=3)


def test_no_zo_branch_all_layers_is_plain_fo():
    assert zo_units(_config(), {"vision": 12, "language": 12}) == frozenset()


def test_tiny_model_plan_matches_its_depth(tiny_model):
    from conftest import tiny_config

    from zocli.method.step import Stepper

    assert tiny_model.depth() == {"vision": 4, "language": 4}
    cfg = tiny_config(vision="zo", language="fo", layers="hop-odd")
    stepper = Stepper(tiny_model, cfg)
    assert stepper.units == {("vision", 1), ("vision", 3)}
    # the partition: ZO units frozen and outside the optimizer, FO units trainable and inside it
    in_opt = {id(p) for group in stepper.optimizer.param_groups for p in group["params"]}
    for unit, module in tiny_model.unit_items():
        for p in module.parameters():
            assert p.requires_grad == (unit not in stepper.units)
            assert (id(p) in in_opt) == (unit not in stepper.units)
    assert [b.name for b in stepper.blocks] == ["vision"]
    assert stepper.blocks[0].units == (("vision", 1), ("vision", 3))
