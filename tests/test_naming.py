"""naming (rows named by what was run), compare.differences (provenance warnings), sweep.cost and the
default tracking interval: pure functions, no training."""

from __future__ import annotations

from types import SimpleNamespace

from zocli.resolve import resolve
from zocli.study import naming
from zocli.study.compare import differences
from zocli.sweep.cost import forwards_per_step


def test_a_composition_of_presets_is_named_by_them_otherwise_by_flags():
    # found: `zo zo hop-even True sign 0.0005` for what `--preset dual-hop-even-mozo` made
    entries = [
        ({"lr": 1e-3}, ("cifar100-inc10", "fo"), ()),
        ({"lr": 1e-3}, ("cifar100-inc10", "dual-hop-even-mozo"), ()),
    ]
    assert naming.names(entries, ["vision"]) == ["cifar100-inc10 + fo", "cifar100-inc10 + dual-hop-even-mozo"]
    flagged = [({"lr": 3e-3, "mozo": True}, ("demo",), ("lr",)), ({"lr": 1e-2, "mozo": False}, ("demo",), ("lr",))]
    assert naming.names(flagged, ["lr", "mozo"]) == ["--lr 0.003", "--lr 0.01"]
    # a flag every run shares (a sweep's --max-steps, --seed) does not hide the presets that differ
    capped = [({"vision": v}, ("demo", p), ("max_steps",)) for v, p in (("fo", "fo"), ("zo", "vision-zo"))]
    assert naming.names(capped, ["vision"]) == ["demo + fo", "demo + vision-zo"]
    # same presets, nothing flagged that varies: every varying key as a flag
    assert naming.names([({"mozo": True}, ("demo",), ()), ({"mozo": False}, ("demo",), ())], ["mozo"]) == [
        "--mozo",
        "--no-mozo",
    ]


def test_values_are_spelled_as_a_user_types_them():
    assert [naming.spell(v) for v in (True, False, None, 5e-4, "sign")] == ["on", "off", "unset", "0.0005", "sign"]
    assert naming.flag("eps_vision", None) == "--eps-vision unset"


def test_eval_a_b_warns_once_per_provenance_key_that_differs():
    def row(name, sha, revision):
        record = {"weights": {"sha256": sha}, "data": {"revision": revision}, "versions": {"zocli": "0.1.0"}}
        return SimpleNamespace(run=f"/runs/{name}", provenance=record)

    same = SimpleNamespace(differing=("lr",), rows=(row("a", "1" * 64, "r1"), row("b", "1" * 64, "r1")))
    assert differences(same) == []
    drift = SimpleNamespace(differing=("lr",), rows=(row("a", "1" * 64, "r1"), row("b", "2" * 64, "r2")))
    lines = differences(drift)
    assert len(lines) == 2 and "weights sha256" in lines[0] and "data revision" in lines[1]
    # a key the table already shows (the weights themselves vary) is not warned about twice
    assert not any(
        "weights" in line for line in differences(SimpleNamespace(differing=("pretrained",), rows=drift.rows))
    )


def test_dry_run_cost_counts_zo_forwards_per_step():
    fo = forwards_per_step(resolve(["demo"]).config)
    dual = forwards_per_step(resolve(["demo", "dual-zo"]).config)
    assert fo == 1 and dual > 4 * fo  # ZO runs cost several FO runs (found: launched blind)


def test_the_default_tracking_interval_draws_about_ten_points_per_task():
    # found: --log-every 50 on a 38-step demo task logged no train/loss at all
    cfg = resolve(["demo"], {"report_to": "tensorboard"}).config
    assert cfg.log_interval_for(38) == 3 and cfg.log_interval_for(5000) == 50 and cfg.log_interval_for(4) == 1
    assert resolve(["demo"], {"report_to": "tensorboard", "log_every": 7}).config.log_interval_for(38) == 7
