"""The frozen open_clip backbone: model names, weight resolution (never the network here), tokenizer.

`--model` is any open_clip model whose towers are open_clip's own transformers (the ViTs), or a
model-config JSON file (open_clip's format; the file's stem becomes the model name). `--pretrained`
accepts any of that model's open_clip tags (`open_clip.list_pretrained()`), a weights file,
`local-dir:DIR` (an open_clip model directory) or `none` (random init). Tags resolve only from the
local Hugging Face cache: `train` never touches the network; `zocli prepare --weights` is what downloads. Tags that ship
inside the package (`zocli-tiny` + `testbed`) resolve to their file, checked against its sha256, and
load through the same open_clip call as any weights file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from zocli.config import did_you_mean
from zocli.data import hub
from zocli.errors import UsageError, ZocliError

# DESIGN §3: `ViT-B-16` means the QuickGELU variant the OpenAI weights were trained with, for `openai`
# and for weights open_clip cannot vouch for (none, a file, a local dir). Any other tag of these models
# builds open_clip's own config: laion2b_s34b_b79k was trained with GELU.
MODEL_ALIASES = {"ViT-B-16": "ViT-B-16-quickgelu", "ViT-B-32": "ViT-B-32-quickgelu", "ViT-L-14": "ViT-L-14-quickgelu"}
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# (model, tag) -> stem of zocli/weights/STEM.safetensors and its STEM.json record (sha256, command)
SHIPPED = {("zocli-tiny", "testbed"): "zocli-tiny-testbed"}


class WeightsUnavailable(ZocliError, RuntimeError):
    """Pretrained weights were asked for but are not on this machine."""


class UnknownModel(UsageError, ValueError):
    """The model name is not an open_clip config (a usage error)."""


@dataclass(frozen=True)
class Backbone:
    clip: torch.nn.Module  # open_clip.CLIP, every parameter frozen
    tokenizer: object  # callable: list[str] -> LongTensor (n, context_length)
    name: str  # the open_clip config name actually built
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def open_clip_name(model: str, pretrained: str = "none") -> str:
    """The open_clip config to build for `--model model --pretrained pretrained`.

    A tag whose open_clip record says the weights were trained with QuickGELU (openai, metaclip_*)
    gets the `-quickgelu` config; any other tag keeps the name as typed. Without a tag (none, a file,
    a local dir) the three OpenAI names keep their QuickGELU alias, as before."""
    if model.endswith(".json"):
        return _register_config(Path(model))
    if not hub.is_weights_tag(pretrained):
        return MODEL_ALIASES.get(model, model)
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    quick = f"{model}-quickgelu"
    return quick if cfg.get("quick_gelu") and quick in open_clip.list_models() else model


def declared_depths(model: str, pretrained: str = "none") -> dict[str, int | None]:
    """Each tower's block count as the model's config declares it, without building the model."""
    config = _open_clip().get_model_config(open_clip_name(model, pretrained)) or {}
    return {"vision": config.get("vision_cfg", {}).get("layers"), "language": config.get("text_cfg", {}).get("layers")}


def pretrained_tags(model: str) -> list[str]:
    """open_clip's tags for `model` and for its `-quickgelu` twin (what --pretrained may name)."""
    base = model.removesuffix("-quickgelu")
    pairs = _open_clip().list_pretrained()
    return list(dict.fromkeys(tag for name, tag in pairs if name in (base, f"{base}-quickgelu")))


def build(model: str, pretrained: str = "none", device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen CLIP on `device` ("meta" builds the architecture with no storage)."""
    open_clip = _open_clip()
    if pretrained.startswith("local-dir:"):
        folder = Path(pretrained.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsUnavailable(
                f"--pretrained {pretrained}: {folder} is not an open_clip model directory (no open_clip_config.json)"
            )
        _check_adaptable(pretrained, _local_model_cfg(folder))
        name, weights = pretrained, None
    else:
        _check_known(model)
        name = open_clip_name(model, pretrained)
        _check_adaptable(name, open_clip.get_model_config(name) or {})
        weights = resolve_weights(name, pretrained)
    # A QuickGELU tag on a model with no -quickgelu config (ViT-H-14 dfn5b): open_clip's own switch.
    record = open_clip.get_pretrained_cfg(name, pretrained) if hub.is_weights_tag(pretrained) else {}
    force_quick = bool((record or {}).get("quick_gelu", False))
    with _quiet_random_init_warning():
        clip = _create(open_clip, name, weights, pretrained, device, force_quick)
    clip.requires_grad_(False)
    clip.eval()
    cfg = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return Backbone(clip, open_clip.get_tokenizer(name), name, mean, std)


def _create(open_clip, name: str, weights: str | None, pretrained: str, device, force_quick_gelu: bool = False):
    try:
        return open_clip.create_model(name, pretrained=weights, device=device, force_quick_gelu=force_quick_gelu)
    except Exception as exc:
        if weights is None:
            raise
        reason = " ".join(str(exc).split())[:160]
        raise WeightsUnavailable(
            f"--pretrained {pretrained}: not loadable weights for {name} ({type(exc).__name__}: {reason})"
        ) from None


def resolve_weights(name: str, pretrained: str) -> str | None:
    """A local weights path for `pretrained`, or None for random init; never downloads."""
    if pretrained == "none":
        return None
    if (name, pretrained) in SHIPPED:
        return str(shipped_weights(name, pretrained))
    if hub.is_weights_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"weights file {path} does not exist")
        return str(path)
    cached = _cached_tag_file(name, pretrained)
    if cached is None:
        raise WeightsUnavailable(
            f"'{pretrained}' weights ({_hub_repo(name, pretrained)}) for {name} are not in the local Hugging Face "
            f"cache; download them with "
            f"`zocli prepare --weights --model {name} --pretrained {pretrained}` on a machine with network "
            f"(or `hf download {_hub_repo(name, pretrained)}`), or pass --pretrained PATH to a weights file"
        )
    return cached


def shipped_record(name: str, tag: str) -> dict:
    """The JSON record beside a shipped weights file: sha256, the command that made it, its accuracy."""
    return json.loads((weights_dir() / f"{SHIPPED[(name, tag)]}.json").read_text())


def shipped_weights(name: str, tag: str) -> Path:
    """The package's weights file for (name, tag), verified against the sha256 recorded beside it."""
    path = weights_dir() / f"{SHIPPED[(name, tag)]}.safetensors"
    if not path.is_file():
        raise WeightsUnavailable(
            f"the shipped {tag!r} weights for {name} are missing from the package ({path}); "
            f"reinstall zocli or regenerate them with scripts/pretrain_testbed.py"
        )
    expected = shipped_record(name, tag)["sha256"]
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise WeightsUnavailable(f"{path} does not match its recorded sha256 {expected[:12]}…; reinstall zocli")
    return path


def weights_dir() -> Path:
    """Where the shipped weights and their records live (inside the installed package)."""
    return Path(str(resources.files("zocli") / "weights"))


def download_weights(name: str, tag: str) -> Path:
    """Fetch an open_clip pretrained tag into the Hugging Face cache (the only network access)."""
    if (name, tag) in SHIPPED:  # nothing to fetch: the package carries them
        return shipped_weights(name, tag)
    open_clip = _open_clip()
    _check_known(name)
    name = open_clip_name(name, tag)
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise _no_such_tag(name, tag)
    with hub.offline_unless_reachable() as online:
        try:
            return Path(open_clip.download_pretrained(cfg))
        except Exception as exc:  # hub errors come in many types; the user needs one line
            why = " ".join(str(exc).split())[:160] if online else "the Hugging Face hub is unreachable"
            raise WeightsUnavailable(
                f"could not download {tag!r} weights for {name} ({why}); on a machine with network run "
                f"`hf download {_hub_repo(name, tag)}` and copy its Hugging Face cache here, "
                f"or pass --pretrained PATH to a weights file"
            ) from None


def _hub_repo(name: str, tag: str) -> str | None:
    cfg = _open_clip().get_pretrained_cfg(name, tag) or {}
    return (cfg.get("hf_hub") or "").rstrip("/") or None


def _cached_tag_file(name: str, tag: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo = _hub_repo(name, tag)
    if repo is None:
        raise _no_such_tag(name, tag)
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _no_such_tag(name: str, tag: str) -> WeightsUnavailable:
    tags = pretrained_tags(name)
    listed = (
        f"; its tags: {', '.join(tags[:8])}{', ...' if len(tags) > 8 else ''}"
        if tags
        else "; it has no open_clip weights: use --pretrained none, PATH or local-dir:DIR"
    )
    return WeightsUnavailable(f"open_clip has no pretrained tag {tag!r} for {name}{did_you_mean(tag, tags)}{listed}")


# --model FILE.json whose content a run recorded (zocli.run.inputs): built from the record, not the file
RECORDED_CONFIGS: dict[str, dict] = {}


def use_recorded_config(model: str, content: dict) -> None:
    """Build `--model FILE.json` from `content` (what the run recorded) whether or not the file is there."""
    RECORDED_CONFIGS[str(model)] = content


def read_model_config(path: Path) -> dict:
    """A model-config JSON file, read and checked (modelcheck) before anything is allocated."""
    from zocli.method.modelcheck import ModelConfigError, check_model_config, parse

    if not path.expanduser().is_file():
        raise UnknownModel(f"--model {path}: no such model-config file")
    try:
        cfg = parse(path.expanduser().read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise UnknownModel(f"--model {path} is not a readable JSON model config ({exc})") from None
    try:
        check_model_config(cfg, f"--model {path}")
    except ModelConfigError as exc:
        raise UnknownModel(str(exc)) from None
    return cfg


def _register_config(path: Path) -> str:
    """A user's model-config JSON (open_clip's format): registered under its file stem, which is returned."""
    from zocli.method.modelcheck import check_model_config

    recorded = RECORDED_CONFIGS.get(str(path))
    if recorded is not None:
        try:
            check_model_config(recorded, f"--model {path} (as the run recorded it)")
        except ValueError as exc:
            raise UnknownModel(str(exc)) from None
        cfg = recorded
    else:
        cfg = read_model_config(path)
    open_clip = _open_clip()
    with tempfile.TemporaryDirectory() as folder:  # open_clip registers files: the checked content, by stem
        copy = Path(folder) / f"{path.stem}.json"
        copy.write_text(json.dumps(cfg))
        open_clip.add_model_config(copy)
    return path.stem


def weights_file(model: str, pretrained: str) -> Path | None:
    """The file `--pretrained` loads for `--model` (None: random init, or a directory open_clip reads)."""
    if pretrained.startswith("local-dir:"):
        folder = Path(pretrained.removeprefix("local-dir:")).expanduser()
        found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
        return found[0] if found else None
    weights = resolve_weights(open_clip_name(model, pretrained), pretrained)
    return Path(weights) if weights else None


def _check_known(name: str) -> None:
    if name.endswith(".json"):
        open_clip_name(name)  # registers it, or says why it cannot
        return
    open_clip = _open_clip()
    if name not in open_clip.list_models():
        raise UnknownModel(f"unknown model {name!r}{did_you_mean(name, open_clip.list_models())}")


def _check_adaptable(name: str, model_cfg: dict) -> None:
    """Adapters go into open_clip's own transformer blocks: a ViT image tower and the built-in text
    transformer. ResNet, timm and Hugging Face towers (and CustomTextCLIP) have no such blocks."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    tower = (
        "a ResNet image tower"
        if isinstance(vision.get("layers"), (list, tuple))
        else "a timm image tower"
        if vision.get("timm_model_name")
        else "a Hugging Face text tower"
        if text.get("hf_model_name")
        else "a custom text tower"
        if model_cfg.get("custom_text")
        else None
    )
    if tower is not None:
        raise UnknownModel(
            f"--model {name} has {tower}; zocli adapts open_clip's own transformer blocks in both "
            f"towers: choose a ViT model such as ViT-B-16, ViT-B-32 or ViT-L-14"
        )


def _local_model_cfg(folder: Path) -> dict:
    try:
        return json.loads((folder / "open_clip_config.json").read_text()).get("model_cfg", {})
    except (OSError, ValueError, AttributeError):
        return {}  # open_clip itself reports an unreadable config


def _open_clip():
    import open_clip

    configs = resources.files("zocli") / "model_configs"
    if "zocli-tiny" not in open_clip.list_models():
        open_clip.add_model_config(Path(str(configs)))
    return open_clip


@contextmanager
def _quiet_random_init_warning():
    # open_clip warns on the root logger whenever no weights are loaded; random init is deliberate here.
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
