"""zocli.data.loader's device pipeline: the same seeded crops and resize as the CPU path, in batches."""

from __future__ import annotations

import pytest
import torch

from zocli.data import catalogue, store
from zocli.data.loader import DeviceImages, ImageSpec, TaskImages, pipeline_for, positions_of

SPEC = ImageSpec(48, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))  # upsampled, as CLIP's 224 px are from 32 px


def test_device_batches_match_the_cpu_path_within_interpolation_tolerance(testbed_root):
    bench = catalogue.get("testbed")
    images = TaskImages(store.load(bench, testbed_root)["test"], positions_of(bench.order), SPEC)
    held = DeviceImages(images, torch.device("cpu"))
    keys = [(row, 1000 + row) for row in range(48)] + [(row, None) for row in range(48, 64)]  # crops, eval
    cpu = torch.stack([images[key][0] for key in keys])
    device, labels = held.batch(keys)
    assert device.shape == cpu.shape == (64, 3, 48, 48) and device.dtype == torch.float32
    assert labels.tolist() == [images[key][1] for key in keys]
    error = (device - cpu).abs()
    # float bicubic vs torchvision's fixed-point uint8 kernel: a level or two, a few more at sharp edges
    assert float(error.mean()) < 0.005 and float(error.max()) < 0.3, (float(error.mean()), float(error.max()))
    shifted, _ = held.batch([(row, seed + 1) for row, seed in keys[:48]])  # other crop boxes
    assert float((shifted - cpu[:48]).abs().mean()) > 5 * float(error[:48].mean())


def test_auto_pipeline():
    assert pipeline_for("auto", "cifar100", torch.device("cuda")) == "device"
    assert pipeline_for("auto", "imgr", torch.device("cuda")) == "cpu"
    assert pipeline_for("auto", "cifar100", torch.device("cpu")) == "cpu"
    assert pipeline_for("device", "digits", torch.device("cpu")) == "device"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_batches_equal_the_cpu_device_path(testbed_root):
    bench = catalogue.get("testbed")
    images = TaskImages(store.load(bench, testbed_root)["test"], positions_of(bench.order), SPEC)
    keys = [(row, 7 * row) for row in range(32)] + [(row, None) for row in range(32, 40)]
    on_cpu, labels = DeviceImages(images, torch.device("cpu")).batch(keys)
    on_cuda, cuda_labels = DeviceImages(images, torch.device("cuda")).batch(keys)
    assert on_cuda.is_cuda and torch.equal(labels, cuda_labels)
    assert float((on_cuda.cpu() - on_cpu).abs().max()) < 0.02  # the same float algorithm, ±1 level of rounding
