"""Seconds per training step, and how far each configuration is from its limit (prints figures; not a test).

Uses the exact step `train` runs (`zocli.method.step.Stepper`) on a synthetic batch of the benchmark's shape. Per
configuration: s/step, images/s, loss evaluations per step (the FO pass counts one), the ratio to FO, and
the floor ratio = step time / (loss evaluations × one measured full forward of the batch at the ZO
precision) — 1.0 means the step costs only its forwards; ZO forwards that reuse cached features can go
below it — and "own" = step time / the time spent inside the step's own loss evaluations and FO pass
as they actually ran (cached): what is left above 1.0 is ZO arithmetic, optimizers and overhead. With --flops,
FLOPs per step are counted (torch.utils.flop_counter) and on CUDA reported as achieved TFLOP/s and % of the
device's dense peak for the precision (H100: fp32 67, tf32 495, bf16 989).
--pipeline times the input pipeline alone (images/s; cpu workers, and the device path where it applies)
on prepared benchmarks.
    python perf/step_time.py --model ViT-B-16 --batch-size 8 --configs fo,dual,vision,language --steps 1
    python perf/step_time.py --model zocli-tiny --batch-size 64 --configs fo,dual --flops
    python perf/step_time.py --model zocli-tiny --configs fo --pipeline testbed,digits --data-root DIR
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import replace
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from zocli.data import catalogue
from zocli.data.loader import DEVICE_BENCHMARKS
from zocli.method.attach import build_model
from zocli.method.objective import ClipObjective
from zocli.method.precision import peak_tflops
from zocli.method.step import Stepper, resolve_device, zo_precision
from zocli.resolve import resolve
from zocli.study.memory import plan_for, synthetic_batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds(model, cfg, images, labels, tokens, device, repeats: int) -> float:
    """One full no-grad forward of the batch and its prompts (both towers) at the ZO precision: the
    fastest of `repeats` (other processes on a shared machine only ever add time)."""
    units = frozenset(u for u, _ in model.unit_items())
    objective = ClipObjective(
        model, images, labels, tokens, units, cfg.zo_chunk or 32, cfg.precision, zo_precision(cfg)
    )
    loss = objective.loss_fn(units)
    loss()  # warm-up
    return min(timed(lambda: loss(), device) for _ in range(repeats))


def timed(fn, device: torch.device) -> float:
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began


class ForwardClock:
    """Seconds spent inside the objective's loss evaluations and FO pass (cached prefixes included)
    while active: what a step costs beyond them is the ZO arithmetic, the optimizers and overhead."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self.saved = ClipObjective.loss_fn, ClipObjective.fo_backward
        loss_fn, fo_backward = self.saved
        clock = self

        def timed_loss_fn(objective, units):
            began = time.perf_counter()
            inner = loss_fn(objective, units)
            clock.seconds += time.perf_counter() - began

            def loss():
                began = time.perf_counter()
                value = inner()  # a float: the device has finished
                clock.seconds += time.perf_counter() - began
                return value

            return loss

        def timed_fo_backward(objective):
            began = time.perf_counter()
            value = fo_backward(objective)
            clock.seconds += time.perf_counter() - began
            return value

        ClipObjective.loss_fn, ClipObjective.fo_backward = timed_loss_fn, timed_fo_backward
        return self

    def __exit__(self, *exc):
        ClipObjective.loss_fn, ClipObjective.fo_backward = self.saved


def step_flops(stepper: Stepper, images, labels, tokens, lr: float) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        stepper.step(images, labels, tokens, lr, seed=10**6)
    return counter.get_total_flops()


def pipeline_rate(name: str, pipeline: str, args, device: torch.device, batches: int = 8) -> float:
    """Images/s of the training input pipeline alone (decode, crop, resize, normalise), task 0 of `name`."""
    from zocli.run.session import open_session, task_batches

    session = open_session(
        resolve(
            [],
            {
                "benchmark": name,
                "model": args.model,
                "pretrained": "none",
                "device": str(device),
                "data_root": args.data_root,
                "workers": args.workers,
                "inc": catalogue.get(name).n_classes,
                "input_pipeline": pipeline,
                "batch_size": args.batch_size,
                "epochs": 1,
            },
        ).config
    )
    it = iter(task_batches(session, 0, (0, "bench"), max_steps=batches + 1))
    next(it)  # worker start-up, and the device pipeline's one-time decode, are not the rate
    began, seen = time.perf_counter(), 0
    for images, _, _ in it:  # on the device already
        seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--adapter", default="moe")
    parser.add_argument("--benchmark", default="cifar100")
    parser.add_argument("--inc", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--configs", default="fo")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (the fastest counts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="FO passes: fp32 | tf32 | bf16")
    parser.add_argument("--zo-precision", default="fp32", help="ZO forwards: fp32 | tf32 | bf16")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per step (one extra, untimed step)")
    parser.add_argument("--pipeline", default="", help="comma list of prepared benchmarks to time the loader on")
    parser.add_argument("--data-root", default=os.environ.get("ZOCLI_DATA", "~/.cache/zocli"))
    parser.add_argument("--workers", type=int, default=0, help="loader processes for --pipeline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = resolve(
        [],
        {
            "model": args.model,
            "adapter": args.adapter,
            "benchmark": args.benchmark,
            "inc": args.inc,
            "batch_size": args.batch_size,
            "pretrained": "none",
            "device": args.device,
            "precision": args.precision,
            "zo_precision": args.zo_precision,
        },
    ).config
    model = build_model(cfg, device)
    bench = catalogue.get(cfg.benchmark)
    images, labels, tokens = synthetic_batch(model, bench, cfg.batch_size, cfg.inc, device)
    images.normal_()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.model} {args.adapter} batch {args.batch_size} on {name}, precision {args.precision}, ZO "
        f"{args.zo_precision}, {args.threads} threads, torch {torch.__version__}"
    )
    configs = [c for c in args.configs.split(",") if c]  # --configs "": the input pipeline alone
    forward = forward_seconds(model, cfg, images, labels, tokens, device, max(1, args.steps)) if configs else 0.0
    print(f"one full forward (both towers, no grad): {forward:.3f} s")
    print(
        f"{'config':>10} {'s/step':>8} {'img/s':>8} {'forwards':>8} {'x FO':>6} {'floor':>6} {'own':>6} "
        f"{'GFLOP/step':>11} {'TFLOP/s':>8} {'% peak':>7}  peak RSS"
    )
    base = None
    for config in configs:
        run_cfg = replace(cfg, **plan_for(config))
        stepper = Stepper(model, run_cfg)
        stats = stepper.step(images, labels, tokens, cfg.lr, seed=0)  # warm-up
        runs = []
        for step in range(args.steps):
            one_step = partial(stepper.step, images, labels, tokens, cfg.lr, seed=step + 1)
            with ForwardClock() as clock:
                runs.append((timed(one_step, device), clock.seconds))
        seconds, in_forwards = min(runs)  # the fastest step: contention only adds time
        base = base or seconds
        flops = step_flops(stepper, images, labels, tokens, cfg.lr) if args.flops else None
        precision = run_cfg.precision if config == "fo" else zo_precision(run_cfg)
        peak = peak_tflops(name, precision) if device.type == "cuda" else None
        achieved = flops / seconds / 1e12 if flops else None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{config:>10} {seconds:8.3f} {args.batch_size / seconds:8.2f} {stats.forwards:8d} "
            f"{seconds / base:6.2f} {seconds / (stats.forwards * forward):6.2f} {seconds / in_forwards:6.2f} "
            f"{_fmt(flops and flops / 1e9, '11.1f')} {_fmt(achieved, '8.2f')} "
            f"{_fmt(achieved and peak and 100 * achieved / peak, '6.1f')}%  {rss:,.0f} MiB".replace("–%", "– ")
        )
    for bench_name in filter(None, args.pipeline.split(",")):
        for pipeline in ("cpu", "device") if bench_name in DEVICE_BENCHMARKS else ("cpu",):
            rate = pipeline_rate(bench_name, pipeline, args, device)
            print(
                f"input pipeline {bench_name} {pipeline:>6} ({args.workers} workers, {model.image_size} px, "
                f"batch {args.batch_size}): {rate:,.0f} images/s"
            )


def _fmt(value, spec: str) -> str:
    return format(value, spec) if value else format("–", f">{spec.split('.')[0]}")


if __name__ == "__main__":
    main()
