"""The worker's device report, against FakeNvml (no GPU on this machine) and on the plain CPU path."""

from __future__ import annotations

import os

import pytest

from services.gpu_worker.device import DeviceProbe, process_rss_bytes
from tests.fake_nvml import FakeGpu, FakeNvml

pytestmark = pytest.mark.fast

GIB = 2**30


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu("NVIDIA A10", "GPU-aaaa", total=24 * GIB, used=2 * GIB),
            FakeGpu(
                "NVIDIA H100",
                "GPU-bbbb",
                total=80 * GIB,
                used=30 * GIB,
                utilization=71,
                processes={os.getpid(): 3 * GIB},
            ),
        ]
    )


def test_index_selects_the_device_in_pci_order() -> None:
    report = DeviceProbe("1", enabled=True, nvml=two_gpus()).read()
    assert report.gpu_name == "NVIDIA H100"
    assert report.gpu_uuid == "GPU-bbbb"
    assert (report.vram_total, report.vram_used, report.vram_free) == (80 * GIB, 30 * GIB, 50 * GIB)
    assert report.vram_process == 3 * GIB
    assert report.utilization_percent == 71


def test_uuid_selects_the_device_whatever_its_index() -> None:
    report = DeviceProbe("GPU-aaaa", enabled=True, nvml=two_gpus()).read()
    assert report.gpu_name == "NVIDIA A10"
    assert report.vram_process is None  # this process holds nothing on that GPU


def test_nvml_failures_mean_no_figures_not_exceptions() -> None:
    assert DeviceProbe("0", enabled=True, nvml=FakeNvml([], fail_init=True)).read().vram_total is None
    assert DeviceProbe("7", enabled=True, nvml=two_gpus()).read().vram_total is None
    assert DeviceProbe("GPU-missing", enabled=True, nvml=two_gpus()).available is False


def test_cpu_probe_reports_nothing_but_rss_is_real() -> None:
    probe = DeviceProbe("0", enabled=False)
    assert not probe.available
    assert probe.read().vram_total is None
    assert process_rss_bytes() > 10 * 2**20
