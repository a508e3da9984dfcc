"""Seconds per ZO pass alone — the parameter arithmetic of one hybrid step, no forwards (prints figures).

The ZO pass: per block, draw z, move θ by +εz, −2εz, +εz, accumulate ĝ (column 1); the whole step adds
the rule's direction (Adam moments) and the conservative candidates θ, θ − ηu, θ + ηu (column 2). The
loss is a constant, so only the arithmetic is timed, on the real adapters of a (random-init) model:
  per-tensor (before): z redrawn per tensor at every move, one kernel per tensor (the naive layout);
  per-tensor views:    one z draw per query, still one kernel per tensor (a Block without `flat`);
  flat:                one z draw per query, one kernel per move over one buffer (`blocks.flatten_`).
    python perf/zo_pass.py --model ViT-B-16 --adapter moe --passes 5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from zocli.method import zo
from zocli.method.attach import build_model
from zocli.method.blocks import Block, flatten_
from zocli.method.estimate import ZOSettings, estimate_flat
from zocli.method.plan import zo_units
from zocli.method.step import make_blocks, settings
from zocli.resolve import resolve
from zocli.rng import derive_seed


class ConstantLoss:
    """`zo.Objective` with no forwards: every loss is 1.0, so the pass's arithmetic is all that runs."""

    def fo_backward(self):
        return None

    def loss_fn(self, units):
        return lambda: 1.0

    def reset(self, units=None):
        pass

    def gradient(self, params):
        raise NotImplementedError


def before_estimate(block: Block, seed: int) -> list[torch.Tensor]:
    """The pre-flat finite-difference pass, reproduced: a per-tensor generator stream replayed at each
    of the 3 moves and again for ĝ (4 draws per tensor), one kernel per tensor."""

    def draws(s):
        gen = torch.Generator().manual_seed(s)
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in block.params]

    s = derive_seed(seed, block.name, 0)
    grads = [torch.zeros_like(p) for p in block.params]
    for scale in (1.0, -2.0, 1.0):
        for p, eps, z in zip(block.params, block.eps, draws(s)):
            p.add_(z, alpha=scale * eps)
    for g, eps, z in zip(grads, block.eps, draws(s)):
        g.add_(z, alpha=0.0 / eps)
    return grads


def before_pass(blocks, rule: ZOSettings, moments, seed: int, lr: float) -> None:
    """The pre-flat step arithmetic: `before_estimate` per block, per-tensor Adam and candidates."""
    updates = [g for block in blocks for g in before_estimate(block, seed)]
    if moments is not None:
        updates = moments.direction(updates)
    params = [p for block in blocks for p in block.params]
    theta = [p.detach().clone() for p in params]
    for k in (0.0, -1.0, 1.0, 0.0):
        for p, t, u in zip(params, theta, updates):
            p.copy_(t).add_(u, alpha=k * lr)


def time_it(fn, passes: int) -> float:
    fn(0)  # warm-up: allocator, generator creation
    began = time.perf_counter()
    for index in range(passes):
        fn(index + 1)
    return (time.perf_counter() - began) / passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--adapter", default="moe")
    parser.add_argument("--plan", default="dual", choices=["dual", "vision", "language"])
    parser.add_argument("--rule", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = {"dual": ("zo", "zo"), "vision": ("zo", "fo"), "language": ("fo", "zo")}[args.plan]
    cfg = resolve(
        [],
        {
            "model": args.model,
            "adapter": args.adapter,
            "pretrained": "none",
            "device": "cpu",
            "vision": modes[0],
            "language": modes[1],
            "zo_rule": args.rule,
        },
    ).config
    model = build_model(cfg, "cpu")
    model.units.requires_grad_(False)
    rule = settings(cfg)
    blocks = make_blocks(model, zo_units(cfg, model.depth()), cfg)
    tensors, numel = sum(len(b.params) for b in blocks), sum(b.size for b in blocks)
    print(
        f"{args.model} {args.adapter}, ZO {args.plan}, rule {args.rule}: {len(blocks)} block(s), {tensors} tensors, "
        f"{numel / 1e6:.2f} M parameters; {args.threads} thread(s), torch {torch.__version__}"
    )

    def step(blocks, moments):
        return lambda i: zo.hybrid_step(ConstantLoss(), blocks, None, 1e-3, rule, derive_seed("pass", i), moments)

    def estimates(blocks):  # the finite-difference pass: ±εz moves and ĝ, every block
        return lambda i: [estimate_flat(b, lambda: 1.0, derive_seed("pass", i), rule) for b in blocks]

    adam = args.rule == "adam"
    moments = zo.ZOAdam([p for b in blocks for p in b.params]) if adam else None
    rows = {
        "per-tensor (before)": (
            time_it(lambda i: [before_estimate(b, derive_seed("pass", i)) for b in blocks], args.passes),
            time_it(lambda i: before_pass(blocks, rule, moments, derive_seed("pass", i), 1e-3), args.passes),
        )
    }
    rows["per-tensor views"] = (
        time_it(estimates(blocks), args.passes),
        time_it(step(blocks, zo.ZOAdam.for_blocks(blocks) if adam else None), args.passes),
    )
    flat = [flatten_(b) for b in blocks]
    rows["flat"] = (
        time_it(estimates(flat), args.passes),
        time_it(step(flat, zo.ZOAdam.for_blocks(flat) if adam else None), args.passes),
    )
    (pass0, step0) = rows["per-tensor (before)"]
    print(f"{'':>20}  {'ZO pass (±εz, ĝ)':>24}  {'whole step, no forwards':>28}")
    for name, (pass_s, step_s) in rows.items():
        print(
            f"{name:>20}  {pass_s * 1e3:9.1f} ms  {pass0 / pass_s:5.2f}x faster  "
            f"{step_s * 1e3:11.1f} ms  {step0 / step_s:5.2f}x faster"
        )


if __name__ == "__main__":
    main()
