"""The pinned requirements `make wheels` downloads: zocli's dependencies and pytest (for the gpu-marked tests),
with everything they pull in, at the versions this environment has (those the tests ran with), except PyTorch
itself (torch, torchvision, triton, nvidia-*): the GPU node's own build stays.

    python scripts/wheels.py > wheels/requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("pytest",)  # `make gpu-check` runs the gpu-marked tests
KEPT = re.compile(r"^(torch|torchvision|triton|nvidia-.*)$")  # the machine's own, never replaced


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """{distribution: installed version} of `roots` and what they require (environment markers applied,
    extras not taken), PyTorch's own distributions left out."""
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in found or KEPT.match(name):
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is not installed here: `make venv` first")
        found[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, version in sorted(closure([*project["dependencies"], *EXTRA]).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
