"""Seconds per training step and peak RSS for FO/ZO configurations (prints figures; not a test).

Uses the exact step `train` runs (`zocli.step.Stepper`) on a synthetic batch of the benchmark's shape.
    python benchmarks/step_time.py --model ViT-B-16 --batch-size 8 --configs fo --steps 3
    python benchmarks/step_time.py --model zocli-tiny --batch-size 64 --configs fo,dual,vision,language
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from zocli.attach import build_model  # noqa: E402
from zocli.config import resolve  # noqa: E402
from zocli.memory import synthetic_batch, plan_for  # noqa: E402
from zocli import benchmarks  # noqa: E402
from zocli.step import Stepper  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--adapter", default="moe")
    parser.add_argument("--benchmark", default="cifar100")
    parser.add_argument("--inc", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--configs", default="fo")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve([], {"model": args.model, "adapter": args.adapter, "benchmark": args.benchmark, "inc": args.inc,
                       "batch_size": args.batch_size, "pretrained": "none", "device": "cpu"}).config
    model = build_model(cfg, "cpu")
    bench = benchmarks.get(cfg.benchmark)
    images, labels, tokens = synthetic_batch(model, bench, cfg.batch_size, cfg.inc, "cpu")
    print(f"{args.model} {args.adapter} batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}")
    base = None
    for name in args.configs.split(","):
        stepper = Stepper(model, replace(cfg, **plan_for(name)))
        stepper.step(images, labels, tokens, cfg.lr, seed=0)  # warm-up
        began = time.perf_counter()
        for step in range(args.steps):
            stats = stepper.step(images, labels, tokens, cfg.lr, seed=step + 1)
        seconds = (time.perf_counter() - began) / args.steps
        base = base or seconds
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name:>16}: {seconds:7.3f} s/step ({seconds / base:4.2f}x fo-relative)  "
              f"forwards {stats.forwards}  peak RSS so far {rss:,.0f} MiB")


if __name__ == "__main__":
    main()
