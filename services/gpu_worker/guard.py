"""Device guard: a GPU worker stops taking new work when its device is short of memory or faulted.

The worker stays up and keeps answering health, so the gateway sees NOT_SERVING with the reason and
routes elsewhere; the guard turns it back to SERVING once free memory is over the threshold again and
the last CUDA error is older than the cool-down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.gpu_worker.device import DeviceReport

MIB = 2**20
CUDA_ERROR_COOLDOWN_S = 10.0


def is_device_error(exc: BaseException) -> bool:
    """CTranslate2 and torch report CUDA faults and out-of-memory as RuntimeError (torch.OutOfMemoryError and
    torch.AcceleratorError are subclasses) with these words."""
    text = str(exc)
    return "CUDA" in text or "out of memory" in text.lower() or "cuBLAS" in text or "cuDNN" in text


@dataclass
class DeviceGuard:
    min_free_bytes: int
    last_error: str = ""
    last_error_at: float = 0.0

    def record_error(self, exc: BaseException, now: float | None = None) -> None:
        self.last_error = str(exc).splitlines()[0][:200]
        self.last_error_at = time.monotonic() if now is None else now

    def verdict(self, report: DeviceReport, now: float | None = None) -> str:
        """Empty when the device may take work, else why not."""
        now = time.monotonic() if now is None else now
        if self.last_error and now - self.last_error_at < CUDA_ERROR_COOLDOWN_S:
            return f"CUDA error {now - self.last_error_at:.0f} s ago: {self.last_error}"
        if report.vram_free is not None and report.vram_free < self.min_free_bytes:
            return (
                f"device has {report.vram_free / MIB:.0f} MiB free, under MIN_FREE_VRAM_MB="
                f"{self.min_free_bytes / MIB:.0f}: not taking new work until memory frees up"
            )
        return ""
