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
from services.gpu_worker.engine import Engine

T = TypeVar("T")


class WorkerRuntime:
    """Owns the engine and runs blocking work on at most `concurrency` threads, off the event loop."""

    def __init__(self, worker_id: str, process_num: int, concurrency: int) -> None:
        self.worker_id = worker_id
        self.process_num = process_num
        self.pid = os.getpid()
        self.concurrency = concurrency
        self.engine: Engine | None = None
        self.status: worker_pb2.WorkerStatus = worker_pb2.WORKER_STATUS_STARTING
        self.status_reason = "loading the model"
        self.started = time.monotonic()
        self.active = 0
        self.queued = 0
        self.streams = 0
        self.completed = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="inference")

    def set_status(self, status: worker_pb2.WorkerStatus, reason: str = "") -> None:
        self.status, self.status_reason = status, reason

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
        return await asyncio.shield(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
