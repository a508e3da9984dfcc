"""Shared fixtures: offline, CPU, the tiny model and the bundled digits benchmark."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the test suite may wait on a network

import pytest
import torch

from zocli.config import Config
from zocli.resolve import resolve

torch.set_num_threads(1)  # tiny models: one thread avoids oversubscription on 2 cores


def tiny_config(**overrides) -> Config:
    """The digits-demo preset (digits, zocli-tiny, random init, CPU) with overrides: the fast protocol."""
    return resolve(["digits-demo"], overrides).config


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A data root with digits prepared once for the whole session."""
    from zocli.data import catalogue, store

    root = tmp_path_factory.mktemp("data")
    store.prepare(catalogue.get("digits"), root)
    return root


@pytest.fixture(scope="session")
def testbed_root(tmp_path_factory):
    """A data root with the generated test-bed prepared once for the whole session."""
    from zocli.data import catalogue, store

    root = tmp_path_factory.mktemp("testbed")
    store.prepare(catalogue.get("testbed"), root)
    return root


@pytest.fixture
def tiny_model():
    """An AdaptedCLIP on zocli-tiny with MoE adapters, seeded init."""
    from zocli.method.attach import build_model

    return build_model(tiny_config(), "cpu")


# Under pytest-xdist (`make test`) each module runs on one worker. Starting the longest ones first keeps a
# worker from being left alone with one of them at the end; within a module the order is unchanged.
# The Makefile passes --no-loadscope-reorder (xdist would order modules by their number of tests and
# leave a long module of few tests for the end); this list is in falling order of measured time
# (`pytest --durations=0`, summed per module).
LONGEST_MODULES = (
    "test_resume.py",
    "test_sweep.py",
    "test_parallel.py",  # one 2-rank torchrun launch and a 2-task submitit job: most of it waits on imports
    "test_train_zo.py",
    "test_setup.py",  # builds and installs the wheel, then trains with it
    "test_errors.py",
    "test_cli.py",
    "test_inputs.py",
    "test_rundir.py",
    "test_probe.py",
    "test_data.py",
    "test_pretrain.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort
