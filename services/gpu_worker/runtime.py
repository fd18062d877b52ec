"""The worker's mutable state: its transcriber, its status and the slots that bound concurrent calls.

A call's blocking work (decoding its audio, waiting for its windows) runs on an inference thread; the
decoding itself happens on the batch scheduler's thread, where the windows of every call meet.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from services.common.errors import RequestError
from services.gen import worker_pb2
from services.gpu_worker.device import DeviceReport
from services.gpu_worker.guard import DeviceGuard, is_device_error

if TYPE_CHECKING:  # the batching modules come with the model (numpy, the engine): see `lifecycle`
    from services.gpu_worker.batching.transcriber import Transcriber
    from services.gpu_worker.speakers.scheduler import SpeakerScheduler

T = TypeVar("T")

log = structlog.get_logger()


#: Threads for live streams' decodes: they wait on the scheduler like calls do, but never for a call's slot.
_STREAM_THREADS = 64


class WorkerRuntime:
    """Owns the transcriber and runs calls' blocking work on at most `concurrency` threads, off the event loop."""

    def __init__(self, worker_id: str, process_num: int, concurrency: int, guard: DeviceGuard | None = None) -> None:
        self.worker_id = worker_id
        self.process_num = process_num
        self.pid = os.getpid()
        self.concurrency = concurrency
        self.guard = guard or DeviceGuard(min_free_bytes=0)
        self.transcriber: Transcriber | None = None
        self.speakers: SpeakerScheduler | None = None  # None: SPEAKER_MODEL=off
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
        self._stream_executor = ThreadPoolExecutor(max_workers=_STREAM_THREADS, thread_name_prefix="stream")

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

    def require_transcriber(self) -> Transcriber:
        if self.transcriber is None or self.status != worker_pb2.WORKER_STATUS_SERVING:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "WORKER_NOT_SERVING",
                f"worker {self.worker_id} is not serving ({self.status_reason}); retry on another worker",
            )
        return self.transcriber

    @contextmanager
    def stream_open(self) -> Iterator[None]:
        """Count a live stream here and in the scheduler, which keeps bulk batches small while it is open."""
        scheduler = self.transcriber.scheduler if self.transcriber is not None else None
        speakers = self.speakers
        self.streams += 1
        for each in (scheduler, speakers):
            if each is not None:
                each.stream_opened()
        try:
            yield
        finally:
            self.streams -= 1
            for each in (scheduler, speakers):
                if each is not None:
                    each.stream_closed()

    def require_speakers(self) -> SpeakerScheduler:
        if self.speakers is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "SPEAKER_MODEL_OFF",
                f"worker {self.worker_id} has no speaker model (SPEAKER_MODEL=off): speaker labels are not available",
            )
        return self.speakers

    def streams_backlogged(self) -> bool:
        """Live-stream windows already fill a batch: an interim decode now would only wait."""
        if self.transcriber is None:
            return False
        scheduler = self.transcriber.scheduler
        from services.gpu_worker.batching.scheduler import Priority

        return scheduler.queued(Priority.INTERIM) >= scheduler.max_batch

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on an inference thread once a slot is free.

        The slot is released when the thread finishes, not when the caller goes away, so a cancelled
        request never lets more than `concurrency` calls run at once; its windows still queued leave
        the scheduler's queue at once.
        """
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.active += 1

        def release() -> None:
            self.active -= 1
            self._slots.release()

        return await self._call(self._executor, release, fn, *args)

    async def run_for_stream(self, fn: Callable[..., T], *args: object) -> T:
        """Run a live stream's decode: it takes no call slot (streams are admitted by the gateway's
        stream limits), and its windows go ahead of bulk windows in the scheduler."""
        return await self._call(self._stream_executor, None, fn, *args)

    async def _call(
        self, executor: ThreadPoolExecutor, release: Callable[[], None] | None, fn: Callable[..., T], *args: object
    ) -> T:
        from services.gpu_worker.batching.scheduler import CallToken
        from services.gpu_worker.batching.transcriber import current_call

        call = CallToken()
        context = contextvars.copy_context()  # the request's log context, and the call's token
        context.run(current_call.set, call)
        future = asyncio.get_running_loop().run_in_executor(executor, context.run, fn, *args)
        if release is not None:
            future.add_done_callback(lambda _: release())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self.transcriber is not None:
                self.transcriber.scheduler.cancel(call)
            if self.speakers is not None:
                self.speakers.cancel(call)
            raise
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

    async def stream(self, fn: Callable[..., None], *args: object) -> AsyncIterator[T]:
        """Run `fn(emit, *args)` like `run`, yielding every item it passes to `emit` as soon as it does.

        When the consumer stops early (the client went away), the next `emit` raises `Abandoned` on the
        inference thread, so a long recording stops being decoded instead of holding the slot to its end.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[T] = asyncio.Queue()
        abandoned = threading.Event()
        emitted = 0
        # The request's log context, so the line logged when an abandoned thread stops names its request.
        bound = structlog.contextvars.get_contextvars()

        def emit(item: T) -> None:
            nonlocal emitted
            if abandoned.is_set():
                raise Abandoned
            emitted += 1
            loop.call_soon_threadsafe(items.put_nowait, item)

        def stopped(future: asyncio.Future[Any]) -> None:
            if not future.cancelled():
                future.exception()  # retrieved, so asyncio does not log an unobserved Abandoned
            log.info("inference_abandoned", items_emitted=emitted, **bound)

        done = asyncio.ensure_future(self.run(fn, emit, *args))
        waiting: asyncio.Future[T] | None = None
        try:
            while True:
                waiting = asyncio.ensure_future(items.get())
                await asyncio.wait((waiting, done), return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield waiting.result()
                    continue
                # Items are queued by call_soon_threadsafe before `done` resolves, so all are here now.
                while not items.empty():
                    yield items.get_nowait()
                done.result()
                return
        finally:
            abandoned.set()
            if waiting is not None:
                waiting.cancel()
            if not done.done():
                done.add_done_callback(stopped)
                done.cancel()  # the call's windows still queued leave the scheduler

    def shutdown(self) -> None:
        if self.transcriber is not None:
            self.transcriber.scheduler.close()
        if self.speakers is not None:
            self.speakers.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stream_executor.shutdown(wait=False, cancel_futures=True)


class Abandoned(Exception):
    """Raised on the inference thread when nobody reads what `WorkerRuntime.stream` produces any more."""
