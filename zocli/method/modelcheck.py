"""A model-config JSON (`--model FILE.json`) checked before open_clip allocates anything from it.

open_clip trusts its configs: a width of 10^7 allocates without bound, `layers = -3` builds a tower with no
blocks (so there is nothing to adapt), `layers = 0`, a tower that is not an object or a patch larger than the
image fail deep inside with an internal error. Every size here is bounded, and the whole model's parameter
count is estimated and bounded, so the answer is one line before any allocation.
"""

from __future__ import annotations

import json
from typing import Any

from zocli.errors import UsageError

MAX_DEPTH = 64  # a model config nests 3 deep; a deeper document is refused before json builds it
MAX_SIZE = 65536  # any one width, embedding or vocabulary dimension
MAX_LAYERS = 512
MAX_IMAGE = 4096
MAX_CONTEXT = 4096
MAX_VOCAB = 1_000_000
MAX_PARAMETERS = 20_000_000_000  # ~80 GB of fp32 weights: ViT-bigG is 2.5 billion


class ModelConfigError(UsageError, ValueError):
    """A model-config file zocli refuses to build (a usage error: the file named on the command line)."""


def parse(data: bytes) -> Any:
    """JSON with its nesting bounded (a 100,000-deep array is refused, not a RecursionError)."""
    text = data.decode("utf-8")
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        elif char in "]}":
            depth -= 1
    return json.loads(text)


def check_model_config(cfg: Any, where: str) -> None:
    """Raise ModelConfigError naming `where` and the key when a size is missing, not a positive integer
    within bounds, or the model would be larger than MAX_PARAMETERS."""
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise ModelConfigError(
            f"{where}: a model config needs embed_dim, vision_cfg and text_cfg "
            f"(open_clip's format, e.g. its model_configs/ViT-B-16.json)"
        )
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    for name, tower in (("vision_cfg", vision), ("text_cfg", text)):
        if not isinstance(tower, dict):
            raise ModelConfigError(f"{where}: {name} must be an object, got {type(tower).__name__}")
    if _foreign(cfg):
        return  # not open_clip's own transformers: backbone refuses these by name
    embed = _size(cfg, "embed_dim", MAX_SIZE, where)
    image = vision.get("image_size", 224)
    if isinstance(image, list) and len(image) == 2:
        image = min(_size({"image_size": v}, "image_size", MAX_IMAGE, where + " vision_cfg") for v in image)
    else:
        image = _size(vision, "image_size", MAX_IMAGE, where + " vision_cfg", 224)
    patch = _size(vision, "patch_size", MAX_IMAGE, where + " vision_cfg", 16)
    if patch > image:
        raise ModelConfigError(f"{where}: vision_cfg patch_size {patch} is larger than image_size {image}")
    v_width = _size(vision, "width", MAX_SIZE, where + " vision_cfg", 768)
    v_layers = _size(vision, "layers", MAX_LAYERS, where + " vision_cfg", 12)
    head_width = _size(vision, "head_width", MAX_SIZE, where + " vision_cfg", 64)
    if head_width > v_width:
        raise ModelConfigError(f"{where}: vision_cfg head_width {head_width} is larger than width {v_width}")
    t_width = _size(text, "width", MAX_SIZE, where + " text_cfg", 512)
    t_layers = _size(text, "layers", MAX_LAYERS, where + " text_cfg", 12)
    heads = _size(text, "heads", MAX_SIZE, where + " text_cfg", 8)
    if heads > t_width or t_width % heads:
        raise ModelConfigError(f"{where}: text_cfg width {t_width} is not divisible into {heads} heads")
    context = _size(text, "context_length", MAX_CONTEXT, where + " text_cfg", 77)
    vocab = _size(text, "vocab_size", MAX_VOCAB, where + " text_cfg", 49408)
    for tower, key in ((vision, "mlp_ratio"), (text, "mlp_ratio")):
        ratio = tower.get(key, 4.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
            raise ModelConfigError(f"{where}: mlp_ratio must be a number in (0, 64], got {ratio!r}")
    tokens = (image // patch) ** 2 + 1
    parameters = (
        12 * v_width**2 * v_layers
        + 12 * t_width**2 * t_layers
        + (tokens + 3 * patch * patch) * v_width
        + (vocab + context) * t_width
        + embed * (v_width + t_width)
    )
    if parameters > MAX_PARAMETERS:
        raise ModelConfigError(
            f"{where}: the model would have about {parameters:.3g} parameters (more than {MAX_PARAMETERS:.0e}); "
            f"check its widths and layers"
        )


def _foreign(cfg: dict) -> bool:
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    return bool(
        isinstance(vision.get("layers"), (list, tuple))
        or vision.get("timm_model_name")
        or text.get("hf_model_name")
        or cfg.get("custom_text")
    )


def _size(table: dict, key: str, bound: int, where: str, default: int | None = None) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise ModelConfigError(f"{where}: {key} must be an integer from 1 to {bound}, got {value!r}")
    return value
