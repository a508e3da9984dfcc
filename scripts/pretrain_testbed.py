"""Regenerate the shipped test-bed weights: zocli/weights/zocli-tiny-testbed.{safetensors,json}.

    python scripts/pretrain_testbed.py            # seed 0, 1000 steps, 2 threads: a few minutes on 2 cores

Contrastive pretraining of zocli-tiny on the world's pretraining half (zocli/pretrain.py), then the
zero-shot accuracy on the `testbed` benchmark's test set, measured through zocli's own evaluation.
The token embedding is stored in fp16 (49,408 × 32: most of the file); everything else in fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

from zocli.method.backbone import SHIPPED, weights_dir
from zocli.run.pretrain import MODEL, PretrainConfig, pretrain

HALF = ("token_embedding.weight",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=weights_dir(), help="folder for the .safetensors and .json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PretrainConfig(seed=args.seed, steps=args.steps)
    began = time.perf_counter()
    result = pretrain(
        cfg, on_step=lambda s, loss: print(f"step {s:5d}  loss {loss:.4f}", flush=True) if s % 100 == 0 else None
    )
    seconds = time.perf_counter() - began
    tensors = {k: (v.half() if k in HALF else v).contiguous() for k, v in result.state_dict.items()}
    blob = safetensors.torch.save(tensors, metadata={"format": "pt", "model": MODEL})
    stem = SHIPPED[(MODEL, "testbed")]
    weights = args.out / f"{stem}.safetensors"
    args.out.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(blob)
    zero_shot = measure_zero_shot(weights)
    record = {
        "model": MODEL,
        "tag": "testbed",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "command": "python " + " ".join(["scripts/pretrain_testbed.py", *sys.argv[1:]]),
        "pretrain": cfg.__dict__,
        "threads": args.threads,
        "torch": torch.__version__,
        "loss_first": round(result.loss_first, 4),
        "loss_last": round(result.loss_last, 4),
        "seconds": round(seconds, 1),
        "zero_shot": zero_shot,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def measure_zero_shot(weights: Path) -> dict:
    """Zero-shot accuracy of `weights` on every testbed task (softmax over all 100 classes)."""
    from zocli.resolve import resolve
    from zocli.run.evaluate import evaluate_seen
    from zocli.run.metrics import seen_accuracy
    from zocli.run.session import open_session

    with tempfile.TemporaryDirectory() as root:
        cfg = resolve(["demo"], {"data_root": root, "pretrained": str(weights)}).config
        session = open_session(cfg)
        accuracy = evaluate_seen(session, session.split.n_tasks - 1)
    return {
        "prompt": cfg.prompt,
        "row": list(accuracy.row),
        "seen": round(seen_accuracy(accuracy.row, accuracy.sizes), 2),
    }


if __name__ == "__main__":
    main()
