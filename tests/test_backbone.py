"""zocli.method.backbone: weights never come from the network, model names and the QuickGELU alias."""

import hashlib
import json
import time
from importlib import resources

import pytest
import torch
from safetensors.torch import save_file

from zocli.method.backbone import UnknownModel, WeightsUnavailable, build, open_clip_name


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point the Hugging Face cache at an empty folder, whatever this machine has cached."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_openai_without_cache_fails_fast_with_a_one_line_fix(empty_hf_cache):
    import open_clip  # noqa: F401  (import cost is not what this measures: waiting on a network is)
    from huggingface_hub import try_to_load_from_cache  # noqa: F401

    began = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        build("ViT-B-16", "openai", "meta")
    assert time.perf_counter() - began < 5.0
    message = str(info.value)
    assert "\n" not in message
    assert "zocli prepare --weights" in message
    assert "--pretrained PATH" in message


def test_a_weights_file_path_loads_exactly(tiny_model, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_model.clip.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    loaded = build("zocli-tiny", str(path), "cpu").clip.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # and a random-init build is something else: the file really was read
    other = build("zocli-tiny", "none", "cpu").clip.state_dict()
    assert not all(torch.equal(other[k], state[k]) for k in state)


def test_frozen_and_in_eval_mode(tmp_path):
    backbone = build("zocli-tiny", "none", "cpu")
    assert not any(p.requires_grad for p in backbone.clip.parameters())
    assert not backbone.clip.training
    assert backbone.image_size == 32
    assert backbone.tokenizer(["a bad photo of a one."]).shape == (1, 20)


@pytest.mark.parametrize("name", ["missing.safetensors", "missing.bin", "missing.pt"])
def test_a_missing_weights_file_is_weights_unavailable(tmp_path, name):
    with pytest.raises(WeightsUnavailable) as info:
        build("zocli-tiny", str(tmp_path / name), "cpu")
    assert str(tmp_path / name) in str(info.value)


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(UnknownModel) as info:
        build("ViT-B-61", "none", "meta")
    assert "did you mean 'ViT-B-16'" in str(info.value)
    with pytest.raises(UnknownModel) as info:
        build("zocli-tiyn", "none", "cpu")
    assert "did you mean 'zocli-tiny'" in str(info.value)


def test_vit_b16_means_the_quickgelu_variant():
    from open_clip.transformer import QuickGELU

    assert open_clip_name("ViT-B-16") == "ViT-B-16-quickgelu"
    backbone = build("ViT-B-16", "none", "meta")
    assert backbone.name == "ViT-B-16-quickgelu"
    for tower in (backbone.clip.visual.transformer, backbone.clip.transformer):
        assert len(tower.resblocks) == 12
        assert all(isinstance(block.mlp.gelu, QuickGELU) for block in tower.resblocks)
    assert backbone.image_size == 224
    assert all(p.is_meta for p in backbone.clip.parameters())


def _local_dir(tmp_path, model) -> str:
    """An open_clip model directory (`local-dir:` schema): open_clip_config.json + weights."""
    config = json.loads((resources.files("zocli") / "model_configs" / "zocli-tiny.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file(
        {k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors")
    )
    return f"local-dir:{tmp_path}"


def test_a_local_dir_loads_exactly(tiny_model, tmp_path):
    backbone = build("zocli-tiny", _local_dir(tmp_path, tiny_model), "cpu")
    state, loaded = tiny_model.clip.state_dict(), backbone.clip.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in backbone.clip.parameters())


def test_a_missing_local_dir_is_weights_unavailable(tmp_path):
    with pytest.raises(WeightsUnavailable) as info:
        build("zocli-tiny", f"local-dir:{tmp_path / 'missing'}", "cpu")
    assert str(tmp_path / "missing") in str(info.value)


def test_shipped_testbed_weights_load_offline_and_match_their_record(empty_hf_cache):
    from safetensors.torch import load_file

    from zocli.method.backbone import shipped_record, shipped_weights

    path = shipped_weights("zocli-tiny", "testbed")
    record = shipped_record("zocli-tiny", "testbed")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert record["command"].startswith("python scripts/pretrain_testbed.py")
    assert path.stat().st_size < 5_000_000  # "a few MB at most": fp16 token embedding, fp32 rest
    clip = build("zocli-tiny", "testbed").clip  # the same open_clip call as any weights file
    saved = load_file(str(path))
    for name, value in clip.state_dict().items():
        assert torch.equal(value, saved[name].to(value.dtype)), name


def test_tampered_shipped_weights_are_refused(tmp_path, monkeypatch):
    from zocli.method import backbone

    for f in backbone.weights_dir().iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = tmp_path / "zocli-tiny-testbed.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    monkeypatch.setattr(backbone, "weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsUnavailable, match="does not match its recorded sha256"):
        build("zocli-tiny", "testbed")


def test_the_testbed_tag_belongs_to_the_tiny_model_only():
    with pytest.raises(WeightsUnavailable, match="no pretrained tag 'testbed'"):
        build("ViT-B-32", "testbed", device="meta")


@pytest.mark.parametrize(
    ("model", "tower"),
    [
        ("RN50", "ResNet"),
        ("convnext_base", "timm"),
        ("xlm-roberta-base-ViT-B-32", "Hugging Face"),
        ("coca_ViT-B-32", "custom"),
    ],
)
def test_models_without_open_clip_transformer_blocks_are_a_usage_error(model, tower):
    # Found: --model RN50 ended in "AttributeError: 'ModifiedResNet' object has no attribute 'transformer'".
    with pytest.raises(UnknownModel, match=f"{tower}.*choose a ViT model"):
        build(model, "none", "meta")


# ---------------------------------------------------------------------------------------------- any open_clip ViT


def test_the_quickgelu_alias_follows_the_weights():
    # openai (and metaclip) weights were trained with QuickGELU; laion2b_s34b_b79k with GELU.
    assert open_clip_name("ViT-B-32", "openai") == "ViT-B-32-quickgelu"
    assert open_clip_name("ViT-B-32", "metaclip_400m") == "ViT-B-32-quickgelu"
    assert open_clip_name("ViT-B-32", "laion2b_s34b_b79k") == "ViT-B-32"
    assert open_clip_name("ViT-L-14", "datacomp_xl_s13b_b90k") == "ViT-L-14"
    assert open_clip_name("ViT-B-16", "none") == "ViT-B-16-quickgelu"  # no tag: the study's backbone, as before


def test_a_laion_tag_resolves_to_open_clip_own_model_and_fails_at_the_weights(empty_hf_cache):
    # Found: "no pretrained tag 'laion2b_s34b_b79k' for ViT-B-32-quickgelu", a name the user never typed.
    with pytest.raises(WeightsUnavailable) as info:
        build("ViT-B-32", "laion2b_s34b_b79k", "meta")
    message = str(info.value)
    assert "'laion2b_s34b_b79k' weights (laion/CLIP-ViT-B-32-laion2B-s34B-b79K) for ViT-B-32 are not" in message
    assert "quickgelu" not in message and "\n" not in message


def test_an_unknown_tag_suggests_the_model_own_tags():
    with pytest.raises(WeightsUnavailable) as info:
        build("ViT-B-32", "laion2b_s34b", "meta")
    assert "did you mean 'laion2b_s34b_b79k'?" in str(info.value)
    assert "its tags: openai, " in str(info.value)


def moe_count(towers: list[tuple[int, int]]) -> int:
    """MoE adapters' trainable parameters of (layers, width) towers: per block 2 experts d→64→d (with
    biases) and the router's W_g, W_n (d×2 each)."""
    return sum(layers * (2 * (2 * 64 * d + 64 + d) + 2 * 2 * d) for layers, d in towers)


def adapter_count(model: str, adapter: str = "moe") -> tuple[int, object]:
    from zocli.method.attach import AdaptedCLIP

    backbone = build(model, "none", "meta")
    adapted = AdaptedCLIP(backbone, adapter)
    assert all(p.is_meta for p in backbone.clip.parameters())
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == sum(
        p.numel() for p in adapted.adapter_parameters()
    )
    return sum(p.numel() for p in adapted.adapter_parameters()), backbone


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "towers", "expected"),
    [
        ("ViT-B-32", [(12, 768), (12, 512)], 4_027_392),  # the same widths as ViT-B-16
        ("ViT-L-14", [(24, 1024), (12, 768)], 8_858_112),
    ],
)
def test_vit_b32_and_l14_build_on_meta_with_their_trainable_counts(model, towers, expected):
    assert moe_count(towers) == expected
    assert moe_count([(12, 768), (12, 512)]) == 4_027_392  # ViT-B-16's published count (tests/test_attach.py)
    count, backbone = adapter_count(model)
    assert count == expected
    assert backbone.image_size == 224


def test_a_tiny_vit_from_a_model_config_json(tmp_path):
    config = json.loads((resources.files("zocli") / "model_configs" / "zocli-tiny.json").read_text())
    config["vision_cfg"].update(layers=2, width=48)
    path = tmp_path / "my-tiny-vit.json"
    path.write_text(json.dumps(config))
    count, backbone = adapter_count(str(path))
    assert backbone.name == "my-tiny-vit"
    assert count == moe_count([(2, 48), (4, 32)])


def test_a_model_config_json_that_is_not_one_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"embed_dim": 8}')
    with pytest.raises(UnknownModel, match="needs embed_dim, vision_cfg and text_cfg"):
        build(str(path), "none", "meta")
