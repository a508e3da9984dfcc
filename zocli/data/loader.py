"""From a prepared dataset to batches: task subsets, CLIP transforms, deterministic order and crops.

Augmentation randomness comes from seeds derived from (run seed, task, epoch, position), never from
the global RNG, so batches are the same whatever the worker count and after a resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset, Sampler

from zocli.errors import ZocliError
from zocli.rng import derive_seed

CROP_SCALE = (0.9, 1.0)  # MoE-Adapters' RandomResizedCrop(224, scale=(0.9, 1.0), bicubic)
CROP_RATIO = (3 / 4, 4 / 3)


class CorruptImage(ZocliError, RuntimeError):
    """An image of the prepared copy cannot be decoded: the copy on disk is damaged."""


@dataclass(frozen=True)
class ImageSpec:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def positions_of(order: Sequence[int]) -> dict[int, int]:
    """Canonical label → class-order position (the training label)."""
    return {label: position for position, label in enumerate(order)}


def select(labels: Sequence[int], position: dict[int, int], start: int, end: int) -> list[int]:
    """Row indices whose class-order position lies in [start, end)."""
    return [i for i, label in enumerate(labels) if start <= position[label] < end]


class TaskImages(Dataset):
    """Rows of one split, keyed by (row, crop_seed); crop_seed None means the eval transform."""

    def __init__(self, split, position: dict[int, int], spec: ImageSpec):
        self.split, self.position, self.spec = split, position, spec

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        row, crop_seed = key
        try:
            item = self.split[row]
            image = TF.to_image(item["image"].convert("RGB"))  # (3, H, W) uint8
        except (OSError, ValueError) as exc:  # PIL's undecodable bytes; arrow's damaged buffers
            raise CorruptImage(
                f"the prepared data is damaged: image {row} of {len(self)} cannot be decoded "
                f"({type(exc).__name__}: {exc}); rebuild it with `zocli prepare ... --overwrite`"
            ) from None
        image = (
            _train_crop(image, self.spec.size, crop_seed)
            if crop_seed is not None
            else _eval_resize(image, self.spec.size)
        )
        pixels = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.spec.mean, self.spec.std)
        return pixels, self.position[item["label"]]


class EpochBatches(Sampler):
    """Batches of (row, crop_seed) for `epochs` shuffled passes over `rows`, from step `start` on."""

    def __init__(
        self,
        rows: Sequence[int],
        batch_size: int,
        epochs: int,
        seed: tuple,
        start: int = 0,
        max_steps: int | None = None,
    ):
        self.rows, self.batch_size, self.epochs, self.seed = list(rows), batch_size, epochs, seed
        self.per_epoch = math.ceil(len(self.rows) / batch_size)
        total = self.per_epoch * epochs
        self.total = total if max_steps is None else min(total, max_steps)
        self.start = start

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            epoch, index = divmod(step, self.per_epoch)
            order = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
            yield [(self.rows[i], derive_seed(*self.seed, epoch, int(i))) for i in order]

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(*self.seed, "order", epoch))
        return torch.randperm(len(self.rows), generator=generator).tolist()


def train_loader(
    dataset: TaskImages,
    rows: Sequence[int],
    batch_size: int,
    epochs: int,
    seed: tuple,
    workers: int,
    start: int = 0,
    max_steps: int | None = None,
    pin: bool = False,
) -> DataLoader:
    sampler = EpochBatches(rows, batch_size, epochs, seed, start, max_steps)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin, generator=_private_generator(seed)
    )


# Small images, all of one size: a whole split fits on the device as uint8 (CIFAR-100 train: 150 MB,
# TinyImageNet: 1.2 GB), so crops and resizes run there in batches instead of in CPU workers.
DEVICE_BENCHMARKS = ("cifar100", "tinyimg", "testbed", "digits")


def pipeline_for(choice: str, benchmark: str, device: torch.device) -> str:
    """`--input-pipeline auto`: device for a small-image benchmark on CUDA, else cpu."""
    if choice != "auto":
        return choice
    return "device" if device.type == "cuda" and benchmark in DEVICE_BENCHMARKS else "cpu"


class DeviceImages:
    """A split's images decoded once into one uint8 tensor on the device; batches are cropped, resized
    and normalised there, with the same seeded crop boxes and the same bicubic antialiased resize as
    `TaskImages` (which rounds to uint8 in between: so does this)."""

    def __init__(self, images: TaskImages, device: torch.device):
        self.spec, self.device = images.spec, device
        pixels = [TF.to_image(images.split[row]["image"].convert("RGB")) for row in range(len(images))]
        self.pixels = torch.stack(pixels).to(device)  # (N, 3, H, W) uint8
        self.labels = torch.tensor([images.position[label] for label in images.split["label"]])  # (N,) positions
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (self.spec.mean, self.spec.std))
        self.scale, self.shift = 1 / (255 * std), mean / std  # x/255 normalised = x·scale − shift

    def batch(self, keys: Sequence[tuple[int, int | None]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalised float32 on the device and (B,) class positions, for (row, crop_seed) keys."""
        rows = [row for row, _ in keys]
        height, width, size = self.pixels.shape[-2], self.pixels.shape[-1], self.spec.size
        crops = []
        for row, seed in keys:
            top, left, h, w = (
                _crop_box(height, width, random.Random(seed)) if seed is not None else _center_box(height, width)
            )
            crops.append(self.pixels[row : row + 1, :, top : top + h, left : left + w].float())  # (1, 3, h, w)
        resized = [
            torch.nn.functional.interpolate(c, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            for c in crops
        ]
        images = torch.cat(resized).clamp_(0, 255).round_()  # (B, 3, S, S): what a uint8 resize yields
        return images.mul_(self.scale).sub_(self.shift), self.labels[rows]


class DeviceBatches:
    """A DataLoader's interface over `DeviceImages`: the same sampler, batches built on the device."""

    def __init__(self, images: DeviceImages, sampler):
        self.images, self.sampler = images, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for keys in self.sampler:
            yield self.images.batch(keys)


def device_eval_batches(images: DeviceImages, rows: Sequence[int], batch_size: int) -> DeviceBatches:
    keys = [(row, None) for row in rows]
    return DeviceBatches(images, [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)])


def eval_loader(
    dataset: TaskImages, rows: Sequence[int], batch_size: int, workers: int, pin: bool = False
) -> DataLoader:
    keys = [(row, None) for row in rows]
    return DataLoader(
        dataset,
        sampler=keys,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin,
        generator=_private_generator(("eval",)),
    )


def _private_generator(seed: tuple) -> torch.Generator:
    # A DataLoader without a generator draws its worker base seed from the global RNG each time it
    # is iterated, which would shift gating noise and dropout after a resume.
    return torch.Generator().manual_seed(derive_seed(*seed, "loader"))


def _train_crop(image: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    top, left, height, width = _crop_box(image.shape[-2], image.shape[-1], random.Random(seed))
    return TF.resized_crop(
        image, top, left, height, width, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
    )


def _eval_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(image, [size, size])


def _center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The square `_eval_resize` keeps (resize the shorter side, then center-crop), in source pixels."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _crop_box(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling, driven by a private RNG."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(height, width)  # fallback: the central square, as torchvision does for extreme ratios
    return (height - side) // 2, (width - side) // 2, side, side
