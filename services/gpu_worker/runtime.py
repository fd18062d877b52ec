"""The worker's mutable state: its engine, its status and the slots that bound concurrent inference."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from services.common.errors import RequestError
from services.gen import worker_pb2
from services.gpu_worker.device import DeviceReport
from services.gpu_worker.engine import Engine
from services.gpu_worker.guard import DeviceGuard, is_device_error

T = TypeVar("T")


class WorkerRuntime:
    """Owns the engine and runs blocking work on at most `concurrency` threads, off the event loop."""

    def __init__(self, worker_id: str, process_num: int, concurrency: int, guard: DeviceGuard | None = None) -> None:
        self.worker_id = worker_id
        self.process_num = process_num
        self.pid = os.getpid()
        self.concurrency = concurrency
        self.guard = guard or DeviceGuard(min_free_bytes=0)
        self.engine: Engine | None = None
        self.status: worker_pb2.WorkerStatus = worker_pb2.WORKER_STATUS_STARTING
        self.status_reason = "loading the model"
        self.started = time.monotonic()
        self.active = 0
        self.queued = 0
        self.streams = 0
        self.completed = 0
        self.draining = asyncio.Event()
        self.guard_reason = ""  # set while the device guard holds the worker NOT_SERVING
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="inference")

    def set_status(self, status: worker_pb2.WorkerStatus, reason: str = "") -> None:
        self.status, self.status_reason = status, reason

    def apply_guard(self, reason: str) -> None:
        """Turn NOT_SERVING for a device problem, and back to SERVING when it is gone."""
        if reason and self.status == worker_pb2.WORKER_STATUS_SERVING:
            self.set_status(worker_pb2.WORKER_STATUS_NOT_SERVING, reason)
        elif not reason and self.guard_reason and self.status == worker_pb2.WORKER_STATUS_NOT_SERVING:
            self.set_status(worker_pb2.WORKER_STATUS_SERVING)
        elif reason and self.status == worker_pb2.WORKER_STATUS_NOT_SERVING:
            self.status_reason = reason
        self.guard_reason = reason

    def require_engine(self) -> Engine:
        if self.engine is None or self.status != worker_pb2.WORKER_STATUS_SERVING:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "WORKER_NOT_SERVING",
                f"worker {self.worker_id} is not serving ({self.status_reason}); retry on another worker",
            )
        return self.engine

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on an inference thread once a slot is free.

        The slot is released when the thread finishes, not when the caller goes away, so a cancelled
        request never lets more than `concurrency` inferences run at once.
        """
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.active += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

        def release(_: object) -> None:
            self.active -= 1
            self._slots.release()

        future.add_done_callback(release)
        try:
            return await asyncio.shield(future)
        except RuntimeError as exc:
            if not is_device_error(exc):
                raise
            # The device faulted (out of memory, a CUDA error): stop taking work and let the gateway
            # retry this call on another worker.
            self.guard.record_error(exc)
            self.apply_guard(self.guard.verdict(DeviceReport()))
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "WORKER_DEVICE_ERROR", f"worker {self.worker_id}: {self.guard.last_error}"
            ) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
