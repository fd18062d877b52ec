"""How many workers fit on a device: the product's out-of-memory advice, made automatic.

On a GPU the budget is the device's free memory (NVML) and a worker's cost is its model's weights at
the compute type plus CUDA context and activations; on a CPU the budget is available RAM and cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
GIB = 2**30
# Compute types keep weights at about this many bytes per fp16 byte on disk.
_WEIGHT_SCALE = {"float16": 1.0, "bfloat16": 1.0, "int8_float16": 0.55, "int8": 0.55, "float32": 2.0}
CUDA_OVERHEAD = 700 * MIB  # CUDA context, cuBLAS/cuDNN workspaces and decoding buffers per process
CPU_OVERHEAD = 250 * MIB  # interpreter, CTranslate2, onnxruntime (VAD), audio buffers
# The speaker model (CAM++ on onnxruntime, SPEAKER_MODEL=campplus): measured 105 to 160 MiB of resident memory
# per worker at batch sizes 1 to 16 on a CPU (health reports each worker's own figure). It runs in host memory
# unless onnxruntime has CUDA, so it counts against a GPU's memory only then.
SPEAKER_BYTES = 150 * MIB
# Free memory left aside for other processes and allocator fragmentation.
RESERVE_FRACTION = 0.10


class CapacityError(ValueError):
    """The requested workers do not fit; the message says how many do."""


@dataclass(frozen=True)
class Budget:
    kind: str  # "cuda" or "cpu"
    device: str  # "cuda:0", "cpu"
    total_bytes: int
    free_bytes: int
    cores: int


def model_bytes(model_dir: str | None) -> int | None:
    """Size of model.bin, when the model is a local folder."""
    if model_dir and (Path(model_dir) / "model.bin").is_file():
        return (Path(model_dir) / "model.bin").stat().st_size
    return None


def worker_bytes(
    kind: str,
    compute_type: str,
    weights_on_disk: int | None,
    override_mb: int = 0,
    speakers: bool = False,
    speakers_on_device: bool = False,
) -> int:
    """Estimated memory of one worker on its device; `speakers`: it loads the speaker model, which is on
    the GPU only when `speakers_on_device` (onnxruntime with CUDA)."""
    if override_mb:
        return override_mb * MIB
    weights = weights_on_disk if weights_on_disk is not None else 3 * GIB  # large-v2 in fp16 when unknown
    scale = _WEIGHT_SCALE.get(compute_type, 1.0)
    if kind == "cuda":
        return int(weights * scale) + CUDA_OVERHEAD + (SPEAKER_BYTES if speakers and speakers_on_device else 0)
    return int(weights * scale) + CPU_OVERHEAD + (SPEAKER_BYTES if speakers else 0)


def fitting_workers(budget: Budget, per_worker: int, running: int = 0, by_cores: bool = False) -> int:
    """Workers that fit in total, counting `running` ones whose memory is already in use.

    `by_cores` (for "auto" on a CPU) also caps the count at the cores: a CPU worker keeps at least one
    core busy, and more workers than cores only queue on each other.
    """
    usable = budget.free_bytes - int(budget.total_bytes * RESERVE_FRACTION)
    fit = running + max(0, usable // max(1, per_worker))
    if by_cores and budget.kind == "cpu":
        fit = min(fit, max(1, budget.cores))
    return max(0, fit)


def check_workers(requested: int, budget: Budget, per_worker: int, running: int = 0) -> int:
    fit = fitting_workers(budget, per_worker, running)
    if requested <= fit:
        return requested
    need = (requested - running) * per_worker
    if budget.kind == "cuda":
        raise CapacityError(
            f"{requested} workers do not fit on {budget.device}: each needs about {per_worker / GIB:.1f} GiB, "
            f"{need / GIB:.1f} GiB more in all, and {budget.free_bytes / GIB:.1f} GiB of "
            f"{budget.total_bytes / GIB:.1f} GiB is free. At most {fit} fit: set GPU_SCALE_WORKERS={fit} "
            "(or auto), or use a smaller model or compute type."
        )
    raise CapacityError(
        f"{requested} workers do not fit in this machine's memory: "
        f"{budget.free_bytes / GIB:.1f} GiB of RAM available, about {per_worker / GIB:.2f} GiB per worker. "
        f"At most {fit} fit: set GPU_SCALE_WORKERS={fit} (or auto)."
    )


def cpu_budget() -> Budget:
    total, available = 0, 0
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                key, value = row.split(":", 1)
                if key == "MemTotal":
                    total = int(value.split()[0]) * 1024
                elif key == "MemAvailable":
                    available = int(value.split()[0]) * 1024
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Budget("cpu", "cpu", total, available, cores)


def cuda_budget(device_id: str, nvml: Any | None = None) -> Budget | None:
    """Free memory of the configured GPU through NVML (by UUID, or index in PCI bus order); None without one."""
    try:
        if nvml is None:
            import pynvml

            nvml = pynvml
        lib: Any = nvml
        lib.nvmlInit()
        if device_id.startswith(("GPU-", "MIG-")):
            handle = lib.nvmlDeviceGetHandleByUUID(device_id)
        else:
            handle = lib.nvmlDeviceGetHandleByIndex(int(device_id))
        memory = lib.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # no driver, no GPU, or no such device: the caller falls back to the CPU budget
        return None
    return Budget("cuda", f"cuda:{device_id}", int(memory.total), int(memory.free), os.cpu_count() or 1)
