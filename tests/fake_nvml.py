"""FakeNvml: a stand-in for pynvml, for the one thing this machine cannot have (an NVIDIA GPU).

It models what the real binding does that matters to scribe: devices numbered in PCI bus order,
lookup by index or UUID, memory and utilisation figures, per-process memory, and NVMLError on bad
lookups. The real pynvml path is exercised on a GPU machine when one is lent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    name: str
    uuid: str
    total: int
    used: int
    utilization: int = 0
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.initialised = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError("Not Found")

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes.items()]
