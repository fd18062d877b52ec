"""What the worker's device holds: VRAM and utilisation through NVML, RSS on any machine.

NVML numbers devices by PCI bus order whatever CUDA_VISIBLE_DEVICES says, so the worker finds its GPU
by the identifier it was bound with: a UUID ("GPU-...") is looked up directly, an index is taken in
PCI bus order, which is the order CUDA uses too because supervisord sets CUDA_DEVICE_ORDER=PCI_BUS_ID.
Every NVML failure degrades to "no figures", never to an exception in the health RPC.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

log = structlog.get_logger()


@dataclass(frozen=True)
class DeviceReport:
    gpu_name: str = ""
    gpu_uuid: str = ""
    vram_total: int | None = None
    vram_used: int | None = None
    vram_free: int | None = None
    vram_process: int | None = None
    utilization_percent: int | None = None


def process_rss_bytes() -> int:
    """Current resident set size (Linux /proc), or the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml

        return pynvml
    except ImportError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DeviceProbe:
    """Reads NVML for one configured device. `nvml` is the pynvml module, or a fake in tests."""

    def __init__(self, device_id: str, enabled: bool, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml if nvml is not None else (_load_nvml() if enabled else None)
        self._device_id = device_id.strip()
        self._handle: Any = None
        self._static = DeviceReport()
        if self._nvml is None:
            return
        try:
            self._nvml.nvmlInit()
            if self._device_id.startswith(("GPU-", "MIG-")):
                self._handle = self._nvml.nvmlDeviceGetHandleByUUID(self._device_id)
            else:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(int(self._device_id or 0))
            self._static = DeviceReport(
                gpu_name=_text(self._nvml.nvmlDeviceGetName(self._handle)),
                gpu_uuid=_text(self._nvml.nvmlDeviceGetUUID(self._handle)),
            )
        except Exception as exc:  # NVML raises its own error classes; any failure means "no GPU figures"
            log.warning("nvml_unavailable", error=str(exc), device_id=self._device_id)
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read(self, pid: int | None = None) -> DeviceReport:
        if self._handle is None:
            return self._static
        nvml, handle = self._nvml, self._handle
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            report = DeviceReport(
                gpu_name=self._static.gpu_name,
                gpu_uuid=self._static.gpu_uuid,
                vram_total=int(memory.total),
                vram_used=int(memory.used),
                vram_free=int(memory.free),
                vram_process=self._process_memory(pid or os.getpid()),
                utilization_percent=int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            )
        except Exception as exc:
            log.warning("nvml_read_failed", error=str(exc))
            return self._static
        return report

    def _process_memory(self, pid: int) -> int | None:
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        for proc in processes:
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None
