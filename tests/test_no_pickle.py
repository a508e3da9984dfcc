"""Nothing zocli reads is unpickled (DESIGN §8): checkpoints are safetensors + JSON, data is Arrow.

1. Static: no code under zocli/ calls torch.load without weights_only=True, or touches pickle's loaders,
   dill, cloudpickle, shelve, pandas' read_pickle or numpy's allow_pickle=True.
2. Runtime: with torch.load refusing anything but weights_only=True and pickle.load/loads/Unpickler raising,
   a tiny run is trained, interrupted mid-task, resumed from its mid-task state, re-evaluated, and a task
   checkpoint is loaded. The guards stay on for the whole run, data loading included: when this was written,
   datasets' load_from_disk (Arrow files + JSON state) made no pickle call, so no narrowing was needed.
"""

import ast
import pickle
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parent.parent / "zocli"
BANNED_MODULES = {"dill", "cloudpickle", "shelve", "_pickle", "cPickle"}
BANNED_PICKLE_NAMES = {"load", "loads", "Unpickler"}


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Unpickling call sites in one module's source (aliases of torch/pickle followed)."""
    tree = ast.parse(source, filename=filename)
    torch_names, pickle_names, torch_load_names, found = {"torch"}, {"pickle"}, set(), []

    def where(node) -> str:
        return f"{filename}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                if alias.name == "torch":
                    torch_names.add(local)
                elif alias.name == "pickle":
                    pickle_names.add(local)
                elif alias.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{where(node)} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in BANNED_MODULES:
                found.append(f"{where(node)} from {node.module} import ...")
            for alias in node.names:
                if node.module == "pickle" and alias.name in BANNED_PICKLE_NAMES:
                    found.append(f"{where(node)} from pickle import {alias.name}")
                if node.module in ("torch", "torch.serialization") and alias.name == "load":
                    torch_load_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in pickle_names and node.attr in BANNED_PICKLE_NAMES:
                found.append(f"{where(node)} pickle.{node.attr}")
            if node.attr == "read_pickle":
                found.append(f"{where(node)} {node.value.id}.read_pickle")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_torch_load = (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and (
                (isinstance(func.value, ast.Name) and func.value.id in torch_names)
                or ast.unparse(func.value) in {f"{t}.serialization" for t in torch_names}
            )
        ) or (isinstance(func, ast.Name) and func.id in torch_load_names)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if is_torch_load:
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{where(node)} torch.load without weights_only=True")
        value = keywords.get("allow_pickle")
        if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
            found.append(f"{where(node)} allow_pickle={ast.unparse(value)}")
    return found


def test_no_unpickling_in_zocli_sources():
    found = [
        v
        for path in sorted(PACKAGE.rglob("*.py"))
        for v in violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not found, "unpickling call sites:\n  " + "\n  ".join(found)


@pytest.mark.parametrize(
    ("source", "hits"),
    [
        ("import torch\ntorch.load(p)", 1),
        ("import torch\ntorch.load(p, weights_only=False)", 1),
        ("import torch as T\nT.load(p, map_location='cpu')", 1),
        ("from torch import load\nload(p)", 1),
        ("import torch\ntorch.serialization.load(p)", 1),
        ("import torch\ntorch.load(p, weights_only=True)", 0),
        ("import pickle\npickle.loads(b)", 1),
        ("import pickle as pk\nx = pk.Unpickler(f)", 1),
        ("from pickle import load", 1),
        ("import dill", 1),
        ("import numpy as np\nnp.load(p, allow_pickle=True)", 1),
        ("import json\njson.load(f)\nimport pickle\npickle.dumps(x)", 0),  # writing is not reading
        ("from safetensors.torch import load_file\nload_file(p)", 0),
    ],
)
def test_the_scanner_catches_each_form(source, hits):
    assert len(violations(source)) == hits, violations(source)


# ----------------------------------------------------------------------------------------------
# runtime


class Unpickled(AssertionError):
    pass


@pytest.fixture
def no_unpickling(monkeypatch):
    real_load = torch.load

    def safe_torch_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise Unpickled(f"torch.load without weights_only=True: {args[:1]}")
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise Unpickled("pickle.load/loads called")

    class RefusingUnpickler(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            raise Unpickled("pickle.Unpickler used")

    monkeypatch.setattr(torch, "load", safe_torch_load)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)


def test_guards_are_armed(no_unpickling, tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(1)}, path)
    with pytest.raises(Unpickled):
        torch.load(path)
    assert torch.load(path, weights_only=True)["a"].item() == 1.0
    with pytest.raises(Unpickled):
        pickle.loads(pickle.dumps(1))


def test_train_interrupt_resume_evaluate_and_load_never_unpickle(no_unpickling, digits_root, tmp_path):
    from zocli.resolve import resolve
    from zocli.run import checkpoint, evaluate, train
    from zocli.run.rundir import RunDir

    resolved = resolve(["digits-demo"], {"data_root": str(digits_root), "max_steps": 3})
    out = tmp_path / "run"
    steps = []

    def on_event(event):
        steps.extend([event] if event["event"] == "step" else [])

    # 3 steps per task: stop after the 5th step, in the middle of task 1, so a mid-task state is committed
    with pytest.raises(train.Interrupted):
        train.run(resolved, out, on_event=on_event, should_stop=lambda: len(steps) >= 5)
    run = RunDir.open(out)
    assert run.state_file.is_file(), "no mid-task state was written: resume would not exercise load_state"

    result = train.resume(out)  # reads manifest, task_00 checkpoint and the mid-task state
    assert len(result.acc_matrix) == 5

    again = evaluate.reevaluate(out)  # rebuilds the model from checkpoints alone
    assert again.acc_matrix == result.acc_matrix

    tensors, meta = checkpoint.load_task(run, 4)
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    assert meta["task"] == 4
