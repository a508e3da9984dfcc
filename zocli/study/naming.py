"""Names of what was run, for every output (terminal, Markdown, LaTeX, CSV, legends): a configuration made
of presets alone is named by them (`cifar100-inc10 + dual-hop-even-mozo`); otherwise by the keys that
vary between the compared configurations, spelled as `train` flags (`--lr 0.003`). Values are spelled as
a user types them, never as Python literals (`True`, `None`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Boolean keys whose flags are a pair of words rather than --key on/off.
SWITCHES = {
    "mozo": ("--mozo", "--no-mozo"),
    "conservative": ("--conservative", "--aggressive"),
    "eval_future": ("--eval-future", "--no-eval-future"),
}
# Keys a sweep or a user sets that say where a run ran or which seed it drew, never what it was.
NOT_IDENTITY = (
    "seed",
    "data_root",
    "device",
    "workers",
    "eval_batch_size",
    "save_every",
    "report_to",
    "log_every",
)


def spell(value: Any) -> str:
    """A config value as a user writes it: on/off, unset, 0.003, comma lists."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(spell(v) for v in value)
    return str(value)


def flag(key: str, value: Any) -> str:
    """`--lr 0.003`, `--mozo`, `--no-eval-future`, `--eps-vision unset`."""
    if key in SWITCHES and isinstance(value, bool):
        return SWITCHES[key][0 if value else 1]
    return f"--{key.replace('_', '-')} {spell(value)}"


def flagged_keys(sources: dict[str, str]) -> tuple[str, ...]:
    """The keys a run set by flag (not by a preset, a default or --mozo), apart from where it ran."""
    return tuple(k for k, source in sources.items() if source == "flag" and k not in NOT_IDENTITY)


def by_presets(presets: Sequence[str]) -> str:
    return " + ".join(presets) if presets else "defaults"


def names(
    entries: Sequence[tuple[dict[str, Any], Sequence[str], Sequence[str]]], differing: Sequence[str]
) -> list[str]:
    """One name per (config, presets, flagged keys): the presets (unless every entry shares them), then the
    varying keys that were set by flag; a name left empty or shared falls back to every varying key."""
    shared = len(entries) > 1 and len({tuple(presets) for _, presets, _ in entries}) == 1
    first = [
        " ".join(
            [*([] if shared else [by_presets(presets)]), *(flag(k, config.get(k)) for k in differing if k in flagged)]
        )
        for config, presets, flagged in entries
    ]
    out = []
    for name, (config, presets, _) in zip(first, entries):
        if not name or first.count(name) > 1:
            name = " ".join(flag(k, config.get(k)) for k in differing) or by_presets(presets)
        out.append(name)
    return out
