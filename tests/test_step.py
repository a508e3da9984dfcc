"""zocli.method.step: the FO / ZO / frozen partition, the ZO rules' state, and the default rule's progress."""

from dataclasses import replace

import torch
from conftest import tiny_config

from zocli.data.loader import select, train_loader
from zocli.method.step import Stepper, zo_notes
from zocli.resolve import resolve
from zocli.run.session import open_session


def test_frozen_units_neither_train_nor_enter_any_optimizer(tiny_model):
    cfg = tiny_config(vision="frozen", language="zo", layers="hop-odd")
    stepper = Stepper(tiny_model, cfg)
    frozen = {("vision", 1), ("vision", 3)}
    assert stepper.frozen == frozen and stepper.units == {("language", 1), ("language", 3)}
    fo_ids = {id(p) for group in stepper.optimizer.param_groups for p in group["params"]}
    zo_ids = {id(p) for block in stepper.blocks for p in block.params}
    for unit, module in tiny_model.unit_items():
        for p in module.parameters():
            assert p.requires_grad == (unit not in frozen and unit not in stepper.units)
            assert (id(p) in fo_ids) == p.requires_grad and (id(p) in zo_ids) == (unit in stepper.units)
    before = {u: [p.clone() for p in tiny_model.unit(u).parameters()] for u in frozen}
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 2, (8,), generator=g)
    tokens = tiny_model.tokenizer(["a bad photo of a zero.", "a bad photo of a one."])
    for step in range(3):
        stepper.step(images, labels, tokens, 1e-2, step)
    assert all(torch.equal(a, b) for u in frozen for a, b in zip(before[u], tiny_model.unit(u).parameters()))


def test_zo_adam_state_belongs_to_adam_runs_only(tiny_model):
    assert Stepper(tiny_model, tiny_config(vision="zo")).adam is not None
    assert Stepper(tiny_model, tiny_config(vision="zo", zo_rule="sgd")).adam is None
    assert Stepper(tiny_model, tiny_config()).adam is None  # nothing is ZO


def test_notes_say_when_the_finite_difference_cannot_act():
    mozo_vision = resolve(["digits-demo", "vision-zo", "paper-literal"]).config
    notes = zo_notes(mozo_vision, n_blocks=1)
    assert any("random search" in n for n in notes) and any("cannot act" in n for n in notes)
    assert any("relative" in n for n in zo_notes(mozo_vision, n_blocks=2))
    assert zo_notes(tiny_config(vision="zo"), 1) == []  # the default rule uses every estimate
    assert zo_notes(tiny_config(), 0) == []


def test_one_default_step_lowers_the_loss_ten_times_more_than_the_plain_step(testbed_root):
    """On one fixed test-bed batch, averaged over directions: one step of the default ZO rule (ZO-Adam,
    λ = 3, q = 8; 8 steps) lowers the loss at least 10× as much as the study's plain step (sgd, λ = 1, q = 1;
    16 steps, it is cheap and noisier). Measured: 15.0× here, 13.5× with 16 directions each; q = 1 alone:
    4.5× (README, "Does ZO learn?")."""
    default = resolve(["demo", "dual-zo"], {"data_root": str(testbed_root)}).config
    plain = replace(default, zo_rule="sgd", zo_lr_scale=1.0, queries=1)
    session = open_session(default)
    first, last = session.split.bounds(0)
    rows = select(session.train_labels, session.train.position, first, last)
    images, labels = next(iter(train_loader(session.train, rows, 32, 1, (0, "ten-x"), 0)))
    labels, tokens = labels - first, session.tokens[first:last]
    start = {k: v.clone() for k, v in session.model.units.state_dict().items()}

    def mean_change(cfg, directions: int) -> float:
        changes = []
        for seed in range(directions):
            session.model.units.load_state_dict(start)
            changes.append(Stepper(session.model, cfg).step(images, labels, tokens, cfg.lr, seed).zo_loss_delta)
        return sum(changes) / len(changes)

    plain_change, default_change = mean_change(plain, 16), mean_change(default, 8)
    assert plain_change <= 0 and default_change < 0  # conservative: never worse on the batch
    assert default_change <= 10 * plain_change, (default_change, plain_change)
