"""A procedurally generated image–caption world in which a tiny CLIP can know something (no download).

Every image is one coloured glyph — a shape word × a colour word, e.g. "red star" — drawn at 32 px.
The 100 compositions are the classes of the `testbed` benchmark; their names must be *read* by the
text tower, so a model that learned "red" and "star" from other pairs can name an unseen "red star".

Two styles share the same vocabulary:
- `pretrain`: the glyph large and near the centre on a plain, muted background — the world the shipped tiny
  CLIP was pretrained on, and only on half of the compositions (`pretrain_classes`).
- `benchmark`: the glyph anywhere, on a coloured, textured background, beside a small grey distractor
  glyph, seen through a fixed colour cast — the shifted domain the continual-learning benchmark lives
  in (as CIFAR is to CLIP's web images), so zero-shot transfer works but leaves room for the adapters.

Everything is a pure function of integer seeds: the same (seed, class, index) always draws the same
image, whatever else is generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np

SHAPES = ("circle", "ring", "square", "frame", "diamond", "triangle", "plus", "cross", "star", "moon")
COLOURS = {  # sRGB anchors; each image jitters them
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (230, 215, 40),
    "green": (40, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 225),
    "purple": (135, 50, 190),
    "pink": (240, 125, 185),
    "white": (235, 235, 235),
    "brown": (125, 75, 35),
}
# The benchmark's camera: each channel leaks 45 % into the next (red reads orange, blue reads purple).
# One fixed, learnable shift shared by every class: what adapters can fix once and carry across tasks.
COLOUR_CAST = np.array([[0.55, 0.45, 0.0], [0.0, 0.55, 0.45], [0.45, 0.0, 0.55]], dtype=np.float32)
SIZE = 32  # output pixels per side
SUPERSAMPLE = 2  # glyphs are drawn at 2x and averaged down: smooth edges without a drawing library
TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a {}.",
    "a drawing of a {}.",
    "a small {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a rendering of a {}.",
)


@cache  # captions read it per sample, in pretraining's inner loop
def class_names() -> tuple[str, ...]:
    """The 100 class names, colour-major: class c is colour c // 10 with shape c % 10."""
    return tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)


def pretrain_classes() -> tuple[int, ...]:
    """The 50 compositions pretraining sees: every colour with 5 shapes and every shape with 5 colours
    (a checkerboard), so each word is learned but half of the pairs stay new."""
    return tuple(c for c in range(len(COLOURS) * len(SHAPES)) if (c // len(SHAPES) + c % len(SHAPES)) % 2 == 0)


def render(label: int, style: str, seed: int | tuple[int, ...]) -> np.ndarray:
    """One (32, 32, 3) uint8 image of class `label` in `style`, drawn from `seed` alone."""
    rng = np.random.default_rng(seed)
    colour = np.array(list(COLOURS.values())[label // len(SHAPES)], dtype=np.float32)
    shape = SHAPES[label % len(SHAPES)]
    n = SIZE * SUPERSAMPLE
    if style == "pretrain":
        canvas = _plain_background(rng, n)
        radius, centre = rng.uniform(0.26, 0.40) * n, n / 2 + rng.uniform(-0.12, 0.12, 2) * n
    elif style == "benchmark":
        canvas = _textured_background(rng, n)
        radius, centre = rng.uniform(0.24, 0.36) * n, rng.uniform(0.32, 0.68, 2) * n
        _draw(
            canvas,
            SHAPES[rng.integers(len(SHAPES))],
            rng.uniform(110, 170, 3).mean() * np.ones(3),
            rng.uniform(0.10, 0.16) * n,
            _far_point(rng, centre, n),
            rng,
        )
    else:
        raise ValueError(f"unknown style {style!r}: pretrain or benchmark")
    tint = colour * rng.uniform(0.8, 1.1) + rng.normal(0, 12, 3)
    if style == "benchmark":
        tint = COLOUR_CAST @ tint
    _draw(canvas, shape, tint, radius, centre, rng)
    canvas += rng.normal(0, 6, canvas.shape)  # sensor noise
    small = canvas.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))  # (32, 32, 3)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def caption(label: int, rng: np.random.Generator) -> str:
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(class_names()[label])


def images(labels: np.ndarray, style: str, seed: int, split: str) -> Iterator[np.ndarray]:
    """Images for a list of labels; image i is seeded by (seed, split, label, its index in the class)."""
    split_id = {"train": 0, "test": 1, "pretrain": 2}[split]
    counts: dict[int, int] = {}
    for label in labels.tolist():
        index = counts[label] = counts.get(label, -1) + 1
        yield render(label, style, (seed, split_id, label, index))


# drawing ---------------------------------------------------------------------------------------


def _plain_background(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.full((n, n, 3), rng.uniform(10, 70, 3), dtype=np.float32)  # (n, n, 3) one muted colour


def _textured_background(rng: np.random.Generator, n: int) -> np.ndarray:
    base = rng.uniform(20, 110, 3)  # a muted random colour
    blobs = rng.normal(0, 22, (4, 4, 3))  # low-frequency texture, upsampled to (n, n, 3)
    texture = np.kron(blobs, np.ones((n // 4, n // 4, 1)))
    return (base + texture).astype(np.float32)


def _far_point(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    """A distractor position away from the glyph (the farthest of a few random points)."""
    points = rng.uniform(0.15, 0.85, (6, 2)) * n
    return points[np.argmax(np.linalg.norm(points - centre, axis=1))]


def _draw(
    canvas: np.ndarray, shape: str, colour: np.ndarray, radius: float, centre: np.ndarray, rng: np.random.Generator
) -> None:
    """Paint `shape` onto `canvas` (n, n, 3) in place, rotated by a small random angle."""
    n = canvas.shape[0]
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    angle = rng.uniform(-0.25, 0.25)  # radians: small, so a square never becomes a diamond
    dx, dy = x - centre[0], y - centre[1]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / radius  # (n, n) glyph coordinates, |.| <= 1 inside
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radius
    canvas[_MASKS[shape](u, v)] = colour


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) < 0.3) & (np.abs(v) < 1)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    theta = np.arctan2(v, u) + np.pi / 2  # one point straight up
    return np.hypot(u, v) < 0.42 + 0.58 * ((np.cos(5 * theta) + 1) / 2) ** 2


_MASKS = {
    "circle": lambda u, v: np.hypot(u, v) < 1,
    "ring": lambda u, v: (np.hypot(u, v) < 1) & (np.hypot(u, v) > 0.55),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.8,
    "frame": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) < 0.85) & (np.maximum(np.abs(u), np.abs(v)) > 0.5),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) < 1,
    "triangle": lambda u, v: (v < 0.7) & (np.abs(u) < (v + 1) * 0.62),
    "plus": _plus,
    "cross": lambda u, v: _plus((u + v) / np.sqrt(2), (u - v) / np.sqrt(2)),
    "star": _star,
    "moon": lambda u, v: (np.hypot(u, v) < 1) & (np.hypot(u - 0.5, v + 0.2) > 0.8),
}
