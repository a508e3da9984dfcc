"""Step time at W = 1 and W = 2 ranks (DESIGN §11), and the bytes the ranks exchange per step (prints a table).

The exact step `train` runs (`Stepper` with `run.distributed.ranks`), on a synthetic batch of the
test-bed's shape (32 images, 10 prompts) with the test-bed's tiny CLIP, at the default q = 8,
`--parallelism auto`. Each W is one torchrun launch (gloo on a CPU, one thread per rank; NCCL, one GPU
per rank on CUDA). The launches alternate W = 1, W = 2, W = 1, ... for `--rounds` rounds, so a machine
whose speed drifts (a shared VM) weighs on both alike. A configuration's time is the median of every
round's `--steps` timed steps (each launch warms up with one), measured on rank 0 between two barriers;
beside it rank 0's CPU seconds in the step (process time: what the step costs the rank whatever else
runs on the machine, so on a shared machine its ratio says what an idle one would give). Bytes: the
payload of the all-reduces and all-gathers of one step, per rank.
    python perf/parallel.py                       # dual, vision, fo at W = 1, 2 on this machine's CPU
    python perf/parallel.py --model ViT-B-16 --pretrained none --batch-size 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from zocli.data import catalogue
    from zocli.method.attach import build_model
    from zocli.method.step import Stepper
    from zocli.resolve import resolve
    from zocli.run import distributed
    from zocli.study.memory import plan_for, synthetic_batch

    torch.set_num_threads(args.threads)
    results = {}
    for name in args.configs.split(","):
        flags = {"model": args.model, "pretrained": args.pretrained, "device": args.device, **plan_for(name)}
        cfg = distributed.setup(resolve(["demo"], flags).config)
        model = build_model(cfg, cfg.device if cfg.device != "auto" else "cpu")
        device = next(model.units.parameters()).device
        images, labels, tokens = synthetic_batch(model, catalogue.get("testbed"), args.batch_size, 10, device)
        ranks, sent = distributed.ranks(cfg), [0]
        if ranks.size > 1:

            def counted(fn, sent=sent):
                def wrapped(tensor, *rest):
                    sent[0] += tensor.numel() * tensor.element_size()
                    return fn(tensor, *rest)

                return wrapped

            ranks = replace(ranks, sum_=counted(ranks.sum_), gather=counted(ranks.gather))
        stepper, times, cpu = Stepper(model, cfg, ranks), [], []
        for step in range(args.steps + 1):
            if dist.is_initialized():
                dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sent[0], began, used = 0, time.perf_counter(), time.process_time()
            stats = stepper.step(images, labels, tokens, cfg.lr, step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if dist.is_initialized():
                dist.barrier()
            if step:  # the first step warms up
                times.append(time.perf_counter() - began)
                cpu.append(time.process_time() - used)
        results[name] = {
            "seconds": times,
            "cpu_seconds": cpu,
            "forwards": stats.forwards,
            "bytes": sent[0],
        }
    if distributed.leads():
        print("RESULT " + json.dumps({"world": distributed.world(), "results": results}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zocli-tiny")
    parser.add_argument("--pretrained", default="testbed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="dual,vision,fo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--rounds", type=int, default=3, help="launches of each W, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    passed = [a for a in sys.argv[1:] if a != "--worker"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print_table(measure(args, passed, env), args)


def measure(args, passed: list[str], env: dict) -> dict:
    """{W: {config: forwards, bytes, and the median seconds and CPU seconds over every launch's steps}}."""
    found = {}
    for _ in range(args.rounds):
        for world in map(int, args.worlds.split(",")):
            for name, r in launch(world, passed, env).items():
                pooled = found.setdefault(world, {}).setdefault(name, {"seconds": [], "cpu_seconds": []})
                pooled["seconds"] += r["seconds"]
                pooled["cpu_seconds"] += r["cpu_seconds"]
                pooled.update(forwards=r["forwards"], bytes=r["bytes"])
    for results in found.values():
        for r in results.values():
            r["seconds"], r["cpu_seconds"] = statistics.median(r["seconds"]), statistics.median(r["cpu_seconds"])
    return found


def print_table(found: dict, args) -> None:
    base = found[min(found)]
    print(
        f"{args.model}, batch {args.batch_size}, q = 8, {args.device}, {args.threads} thread(s) per rank, "
        f"{args.rounds} alternating launches of each W x {args.steps} steps"
    )
    print("| config | W | forwards/step | s/step | speed-up | CPU s/step (rank 0) | CPU ratio | bytes/step per rank |")
    print("|---|---|---|---|---|---|---|---|")
    for name in base:
        for world, results in found.items():
            r = results[name]
            speedup, ratio = base[name]["seconds"] / r["seconds"], base[name]["cpu_seconds"] / r["cpu_seconds"]
            row = [name, world, r["forwards"], f"{r['seconds']:.4f}", f"{speedup:.2f}x"]
            row += [f"{r['cpu_seconds']:.4f}", f"{ratio:.2f}x", r["bytes"]]
            print("| " + " | ".join(map(str, row)) + " |")


def launch(world: int, passed: list[str], env: dict) -> dict:
    """One torchrun launch of `world` ranks running the worker; rank 0's results."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
    done = subprocess.run(
        [*command, __file__, "--worker", *passed], env=env, capture_output=True, text=True, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"W={world} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[7:])["results"]


if __name__ == "__main__":
    main()
