"""zocli.config and zocli.resolve: defaults, precedence with provenance, MoZO shorthand, validation, every
shipped preset."""

import dataclasses
import json
from pathlib import Path

import pytest

from zocli.config import MOZO_EPS_VISION, Config, ConfigError
from zocli.data import catalogue
from zocli.resolve import PRESETS_DIR, list_presets, resolve, saved_config


def _preset(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults_match_the_design():
    cfg = Config()
    assert cfg.lr == 1e-3
    assert cfg.eps == 1e-3
    assert cfg.batch_size == 128
    assert cfg.prompt == "a bad photo of a {}."
    assert cfg.adapter == "moe"
    assert cfg.model == "ViT-B-16"
    assert cfg.pretrained == "openai"
    assert (cfg.weight_decay, cfg.warmup_steps, cfg.epochs) == (0.0, 30, 1)
    assert (cfg.lora_rank, cfg.lora_alpha) == (8, 16.0)
    assert (cfg.vision, cfg.language, cfg.layers, cfg.normalize) == ("fo", "fo", "all", "none")
    assert cfg.queries == 8  # DESIGN says 1; ZO-Adam learned most at 8 (README, "Does ZO learn?")
    # the ZO rule was chosen by measurement on the test-bed (README "Does ZO learn?"), not by the design
    assert cfg.zo_rule == "adam" and cfg.zo_lr_scale == 3.0 and cfg.zo_lr is None
    assert cfg.granularity == "branch" and cfg.conservative is True
    assert cfg.eps_for("vision") == cfg.eps_for("language") == 1e-3


def test_resolve_with_nothing_is_the_defaults():
    resolved = resolve()
    assert resolved.config == Config()
    assert set(resolved.sources.values()) == {"default"}
    assert set(resolved.sources) == {f.name for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------------------------------------- precedence


def test_precedence_defaults_presets_in_order_flags(tmp_path):
    a = _preset(tmp_path, "a", 'lr = 0.5\nbatch_size = 7\nbenchmark = "digits"\n')
    b = _preset(tmp_path, "b", "lr = 0.25\nepochs = 3\n")
    resolved = resolve([a, b], {"epochs": 9, "seed": None})
    cfg, src = resolved.config, resolved.sources
    assert cfg.lr == 0.25 and src["lr"] == f"preset:{b}"  # the later preset wins
    assert cfg.batch_size == 7 and src["batch_size"] == f"preset:{a}"
    assert cfg.epochs == 9 and src["epochs"] == "flag"  # a flag beats every preset
    assert cfg.seed == 0 and src["seed"] == "default"  # a flag left unset (None) is not a flag
    assert cfg.inc == 10 and src["inc"] == "default"
    assert resolved.presets == (a, b)

    swapped = resolve([b, a])
    assert swapped.config.lr == 0.5 and swapped.sources["lr"] == f"preset:{a}"


def test_shipped_preset_by_name_is_recorded_by_name():
    resolved = resolve(["digits-demo"], {"lr": 0.1})
    assert resolved.sources["benchmark"] == "preset:digits-demo" and resolved.config.benchmark == "digits"
    assert resolved.sources["lr"] == "flag" and resolved.config.lr == 0.1
    assert json.loads(json.dumps(resolved.as_dict()))["sources"]["lr"] == "flag"


def test_preset_keys_may_use_dashes_and_ints_become_floats(tmp_path):
    path = _preset(tmp_path, "dashes", "batch-size = 16\nlr = 1\neps-vision = 1\n")
    cfg = resolve([path]).config
    assert cfg.batch_size == 16
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.eps_vision == 1.0 and isinstance(cfg.eps_vision, float)


# ---------------------------------------------------------------------------------------------- MoZO


def test_mozo_fills_sign_and_a_smaller_vision_eps():
    resolved = resolve([], {"vision": "zo", "language": "zo", "mozo": True})
    cfg, src = resolved.config, resolved.sources
    assert cfg.normalize == "sign" and src["normalize"] == "mozo"
    assert cfg.eps_vision == MOZO_EPS_VISION == 5e-4 and src["eps_vision"] == "mozo"
    assert cfg.eps_for("vision") == 5e-4 and cfg.eps_for("language") == 1e-3
    assert cfg.eps_for("vision") < cfg.eps_for("language")
    assert src["mozo"] == "flag"


def test_mozo_keeps_what_the_user_set(tmp_path):
    resolved = resolve([], {"vision": "zo", "mozo": True, "eps_vision": 1e-4, "normalize": "none"})
    assert resolved.config.eps_vision == 1e-4 and resolved.sources["eps_vision"] == "flag"
    assert resolved.config.normalize == "none" and resolved.sources["normalize"] == "flag"
    preset = _preset(tmp_path, "p", 'vision = "zo"\neps_vision = 2e-4\n')
    resolved = resolve([preset], {"mozo": True})
    assert resolved.config.eps_vision == 2e-4 and resolved.sources["eps_vision"] == f"preset:{preset}"
    assert resolved.config.normalize == "sign" and resolved.sources["normalize"] == "mozo"


def test_mozo_from_a_preset():
    resolved = resolve(["dual-hop-even-mozo"])
    assert resolved.config.mozo and resolved.config.sign
    assert resolved.sources["eps_vision"] == "mozo"


def test_no_mozo_leaves_eps_alone():
    resolved = resolve([], {"vision": "zo", "mozo": False})
    assert resolved.config.eps_vision is None and resolved.config.normalize == "none"


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides",
    [
        {"eps": 0.0},
        {"eps": -1e-3},
        {"eps_vision": 0.0, "vision": "zo"},
        {"eps_language": -1.0},
        {"batch_size": 0},
        {"batch_size": -4},
        {"epochs": 0},
        {"inc": 0},
        {"lr": 0.0},
        {"layers": "hop-odd"},
        {"layers": "prefix"},
        {"mozo": True},  # MoZO changes a ZO update; with no ZO branch it is a mistake
        {"adapter": "prefix-tuning"},
        {"vision": "so"},
        {"batch_size": "128"},
        {"prompt": "no placeholder"},
        {"layers_n": 3, "vision": "zo"},  # --layers-n without prefix/suffix
    ],
)
def test_invalid_values_raise_config_error(overrides):
    with pytest.raises(ConfigError):
        Config(**overrides)
    with pytest.raises(ConfigError):
        resolve([], overrides)


def test_layers_error_says_how_to_fix():
    with pytest.raises(ConfigError) as info:
        resolve([], {"layers": "hop-odd"})
    assert "--vision zo" in str(info.value)


def test_unknown_preset_key_suggests_the_close_one(tmp_path):
    path = _preset(tmp_path, "typo", "batch_sise = 8\n")
    with pytest.raises(ConfigError) as info:
        resolve([path])
    assert "did you mean 'batch_size'" in str(info.value)


@pytest.mark.parametrize(
    ("key", "meant"), [("learning_rate", "lr"), ("wd", "weight_decay"), ("bs", "batch_size"), ("num_epochs", "epochs")]
)
def test_common_spellings_of_a_key_suggest_ours(tmp_path, key, meant):
    # Found: `learning_rate` got "did you mean 'language'?".
    path = _preset(tmp_path, "alias", f"{key} = 1\n")
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        resolve([path])
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        resolve([], {key: 1})


def test_every_alias_names_a_real_key():
    from zocli.config import KEYS
    from zocli.resolve import KEY_ALIASES

    assert set(KEY_ALIASES.values()) <= set(KEYS) and not set(KEY_ALIASES) & set(KEYS)


def test_unknown_preset_name_suggests_the_close_one():
    with pytest.raises(ConfigError) as info:
        resolve(["dmeo"])
    assert "did you mean 'demo'" in str(info.value)


def test_missing_or_broken_preset_file(tmp_path):
    with pytest.raises(ConfigError):
        resolve([str(tmp_path / "absent.toml")])
    with pytest.raises(ConfigError):
        resolve([_preset(tmp_path, "broken", "lr = = 1\n")])


def test_unknown_flag_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        resolve([], {"learning_rate": 0.1})
    assert "learning_rate" in str(info.value)


def test_config_round_trips_through_json():
    cfg = resolve(["digits-demo"], {"vision": "zo", "mozo": True}).config
    assert saved_config(json.loads(json.dumps(cfg.as_dict()))) == cfg
    with pytest.raises(ConfigError, match="from_the_future"):
        saved_config({**cfg.as_dict(), "from_the_future": 1})
    with pytest.raises(ConfigError, match="not a JSON object"):
        saved_config([])


# ---------------------------------------------------------------------------------------------- shipped presets


def test_every_preset_file_is_listed():
    files = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    assert files, "no presets shipped"
    assert set(files) <= set(list_presets())


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
def test_every_preset_loads_and_validates(name):
    resolved = resolve([name])
    cfg = resolved.config
    assert any(source == f"preset:{name}" for source in resolved.sources.values())
    catalogue.split(catalogue.get(cfg.benchmark), cfg.inc, cfg.base)  # its protocol is possible
    # and it composes with the demo preset, the way method presets are meant to be stacked
    resolve(["digits-demo", name])
