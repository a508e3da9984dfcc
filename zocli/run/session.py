"""A run's fixed context, built once: protocol, data, model, prompts (shared by train and eval)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zocli.config import CUDA_WORKERS, Config, ConfigError
from zocli.data import catalogue, location, store
from zocli.data.catalogue import Benchmark, Split
from zocli.data.loader import (
    DEVICE_BENCHMARKS,
    DeviceBatches,
    DeviceImages,
    EpochBatches,
    ImageSpec,
    TaskImages,
    device_eval_batches,
    eval_loader,
    pipeline_for,
    positions_of,
    select,
    train_loader,
)
from zocli.method.attach import AdaptedCLIP, build_model
from zocli.method.plan import zo_units
from zocli.method.step import resolve_device


@dataclass(frozen=True)
class Session:
    """Everything a run needs, built once: model, data, prompts and protocol. What a run accumulates
    (accuracy rows, peaks) is the trainer's own state, not the session's."""

    cfg: Config
    bench: Benchmark
    split: Split
    device: torch.device
    model: AdaptedCLIP
    train: TaskImages
    test: TaskImages
    train_labels: list[int]
    test_labels: list[int]
    tokens: torch.Tensor  # (n_classes, T): prompts in class-order position
    workers: int
    pipeline: str = "cpu"  # cpu: decode, crop and resize in loader workers; device: on the device, in batches
    # The device pipeline's images, per split: decoded on first use (a cache, so filled in place).
    held: dict[str, DeviceImages] = field(default_factory=dict)


class TaskBatches:
    """Task t's training batches on the session's device: (images, labels local to the task, the task's
    prompts), with seeded crops, through the session's input pipeline."""

    def __init__(self, session: Session, task: int, loader):
        self.session, self.loader = session, loader
        self.first, self.last = session.split.bounds(task)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        device, tokens = self.session.device, self.session.tokens[self.first : self.last]
        for images, positions in self.loader:  # local labels: cross-entropy over this task's classes only
            yield images.to(device, non_blocking=True), (positions - self.first).to(device), tokens


def task_batches(
    session: Session, task: int, seed: tuple, start: int = 0, max_steps: int | None = None, workers: int | None = None
) -> TaskBatches:
    """`task`'s batches of the session's batch size over its epochs, from step `start`, with crops seeded by
    `seed` (`train` draws them with (seed, task)); `workers` overrides the session's."""
    cfg, rows = session.cfg, task_rows(session, task)
    if session.pipeline == "device":
        held = _held(session, "train")
        loader = DeviceBatches(held, EpochBatches(rows, cfg.batch_size, cfg.epochs, seed, start, max_steps))
    else:
        workers = session.workers if workers is None else workers
        pin = session.device.type == "cuda"
        loader = train_loader(session.train, rows, cfg.batch_size, cfg.epochs, seed, workers, start, max_steps, pin)
    return TaskBatches(session, task, loader)


def task_rows(session: Session, task: int) -> list[int]:
    """The training rows of `task`'s classes."""
    return select(session.train_labels, session.train.position, *session.split.bounds(task))


def eval_batches(session: Session, rows, batch_size: int):
    """(images, positions) batches of test `rows`, resized and center-cropped, through the input pipeline."""
    if session.pipeline == "device":
        return device_eval_batches(_held(session, "test"), rows, batch_size)
    return eval_loader(session.test, rows, batch_size, session.workers, pin=session.device.type == "cuda")


def _held(session: Session, split: str) -> DeviceImages:
    if split not in session.held:  # decoded once, on first use
        session.held[split] = DeviceImages(session.train if split == "train" else session.test, session.device)
    return session.held[split]


def open_session(cfg: Config) -> Session:
    """Check the protocol and the data before building anything expensive."""
    bench = location.benchmark(cfg)
    split = catalogue.split(bench, cfg.inc, cfg.base)
    if cfg.input_pipeline == "device" and bench.name not in DEVICE_BENCHMARKS:
        raise ConfigError(
            f"--input-pipeline device holds small images on the device; {bench.name}'s are large "
            f"and of many sizes (use cpu: its prepared copy is pre-resized)"
        )
    dataset = _load_data(bench, Path(cfg.data_root).expanduser())
    _check_every_task_has_images(bench, split, dataset)
    device = resolve_device(cfg.device)
    model = build_model(cfg, device)
    spec = ImageSpec(model.image_size, model.mean, model.std)
    position = positions_of(bench.order)
    tokens = model.tokenizer([cfg.prompt.format(name) for name in bench.prompt_names()]).to(device)
    workers = cfg.workers if cfg.workers is not None else (min(CUDA_WORKERS, _cpus()) if device.type == "cuda" else 0)
    return Session(
        cfg,
        bench,
        split,
        device,
        model,
        TaskImages(dataset["train"], position, spec),
        TaskImages(dataset["test"], position, spec),
        list(dataset["train"]["label"]),
        list(dataset["test"]["label"]),
        tokens,
        workers,
        pipeline=pipeline_for(cfg.input_pipeline, bench.name, device),
    )


def overview(session: Session) -> dict[str, Any]:
    """What the run is about to do (the CLI's banner): model, device, parameter split, tasks × steps."""
    cfg, model = session.cfg, session.model
    zo = zo_units(cfg, model.depth())
    sizes = {
        kind: sum(
            p.numel()
            for unit, module in model.unit_items()
            if (unit in zo) == (kind == "zo")
            for p in module.parameters()
        )
        for kind in ("zo", "fo")
    }
    steps = [
        EpochBatches(
            task_rows(session, t),
            cfg.batch_size,
            cfg.epochs,
            (),
            max_steps=cfg.max_steps,
        ).total
        for t in range(session.split.n_tasks)
    ]
    return {
        "device": str(session.device),
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "adapter": cfg.adapter,
        "benchmark": session.bench.name,
        "parameters": {"trainable": sizes["zo"] + sizes["fo"], **sizes},
        "tasks": session.split.n_tasks,
        "steps": steps,
    }


def _load_data(bench: Benchmark, root: Path):
    if root.exists() and not root.is_dir():
        raise store.DataMissing(f"--data-root {root} is not a directory")
    # Generated benchmarks need no network to prepare, so train does it on first use.
    if bench.name in catalogue.GENERATED and not store.dataset_dir(root, bench.name).is_dir():
        store.prepare(bench, root)
    return store.load(bench, root)


def _check_every_task_has_images(bench: Benchmark, split: catalogue.Split, dataset) -> None:
    # A copy prepared with --allow-partial may leave whole tasks empty: say so now, not at that task.
    for name in ("train", "test"):
        counts = store.class_counts(bench, dataset[name])
        empty = [t for t in range(split.n_tasks) if counts[list(bench.order[slice(*split.bounds(t))])].sum() == 0]
        if empty:
            raise store.DataMissing(
                f"the prepared {bench.name} copy has no {name} images for task(s) {', '.join(map(str, empty))} "
                f"of {split.n_tasks} (it was prepared from a partial source); re-run `zocli prepare --benchmark "
                f"{bench.name} --source DIR --overwrite` with a complete copy"
            )


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
