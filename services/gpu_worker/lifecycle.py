"""The worker's model over the process's life: loaded at start, or on the first call after an idle unload.

WORKER_IDLE_UNLOAD_S gives the memory back. Freeing a model inside a running CPU process gives little
back (the interpreter keeps CTranslate2, onnxruntime, PyAV and numpy mapped, and the allocator keeps its
arenas: see docs/models.md for the figures), so a worker idle that long re-executes itself (same pid, so
supervisord sees no restart) as `--unloaded`: a process that has imported only gRPC and the settings,
answers health SERVING with model_state UNLOADED, and loads the model when the next call arrives, which
then waits for the load (the cold start, reported in health as model_load_time). Nothing heavy is
imported at this module's level for that reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from services.common.config import Settings
from services.common.errors import RequestError, abort
from services.common.models.catalogue import lookup, served_name
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc, worker_pb2
from services.gpu_worker.device import DeviceProbe
from services.gpu_worker.runtime import WorkerRuntime

if TYPE_CHECKING:
    from services.gpu_worker.servicer import TranscriptionServicer

log = structlog.get_logger()
T = TypeVar("T")


class ModelHolder:
    """Loads the engine once (concurrent first calls share the load) and tracks when the worker was last busy."""

    def __init__(self, settings: Settings, runtime: WorkerRuntime, kind: str | None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.kind = kind  # the engine `choice.choose` picked; None: choose at load
        self.name = served_name(settings.whisper_model)
        found = lookup(settings.whisper_model)
        self.aliases = (found.name, *found.aliases) if found is not None else ()
        self.state: worker_pb2.ModelState = worker_pb2.MODEL_STATE_UNLOADED
        self.load_seconds: float | None = None
        self.servicer: TranscriptionServicer | None = None
        self.probe: DeviceProbe | None = None  # set when the model is on a GPU
        self.failed: BaseException | None = None
        self.broken = asyncio.Event()  # a load failed: the worker exits and supervisord starts it afresh
        self._loading: asyncio.Future[None] | None = None
        self._last_active = time.monotonic()
        self._calls = 0

    def idle_seconds(self) -> float:
        """Time since the last call or stream ended; 0 while one runs."""
        busy = self._calls or self.runtime.active or self.runtime.queued or self.runtime.streams
        return 0.0 if busy else time.monotonic() - self._last_active

    async def ready(self) -> TranscriptionServicer:
        """The loaded servicer, loading the model first if it is not in memory."""
        if self.servicer is not None:
            return self.servicer
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        try:
            await asyncio.shield(self._loading)
        except Exception as exc:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "WORKER_MODEL_LOAD_FAILED",
                f"worker {self.runtime.worker_id} could not load model {self.name}: {exc}; retry on another worker",
            ) from None
        assert self.servicer is not None
        return self.servicer

    async def _load(self) -> None:
        self.state = worker_pb2.MODEL_STATE_LOADING
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._load_blocking)
        except BaseException as exc:
            self.failed = exc
            self.state = worker_pb2.MODEL_STATE_UNLOADED
            self.broken.set()
            raise
        self.load_seconds = time.perf_counter() - started
        self.state = worker_pb2.MODEL_STATE_LOADED
        info = self.runtime.transcriber.info if self.runtime.transcriber else None
        log.info(
            "model_loaded",
            model=self.name,
            load_s=round(self.load_seconds, 2),
            engine=info.name if info else "",
            device=info.device if info else "",
        )

    def _load_blocking(self) -> None:
        """Import the engine and its libraries and load the model (seconds: the cold start)."""
        from faster_whisper.vad import get_vad_model

        from services.gpu_worker.batching.scheduler import BatchScheduler
        from services.gpu_worker.batching.transcriber import Transcriber
        from services.gpu_worker.engines.choice import choose
        from services.gpu_worker.engines.loading import load_engine
        from services.gpu_worker.servicer import TranscriptionServicer

        settings = self.settings
        engine = load_engine(settings, self.kind or choose(settings))
        scheduler = BatchScheduler(
            engine,
            settings.worker_batch_size,
            settings.batch_window_ms / 1000,
            streams_with_bulk=engine.info.device_kind == "cuda",
            pack_short=settings.worker_pack_short and engine.info.device_kind != "cuda",
        )
        if settings.speaker_model != "off":
            from services.gpu_worker.speakers.model import SpeakerModel
            from services.gpu_worker.speakers.scheduler import SpeakerScheduler

            # Inside the worker's CUDA_VISIBLE_DEVICES its GPU is index 0, as for the Whisper engine.
            speaker_model = SpeakerModel(
                settings.cpu_threads_per_worker(), engine.info.device_kind, 0, settings.speaker_batch_size
            )
            self.runtime.speakers = SpeakerScheduler(speaker_model, settings.speaker_batch_size)
            log.info(
                "speaker_model_loaded",
                model=speaker_model.info.name,
                memory_mib=speaker_model.info.memory_bytes // 2**20,
            )
        get_vad_model()  # streams share it; the first should not wait for its load
        if engine.info.device_kind == "cuda":
            # NVML is asked about the GPU the worker was bound to, by the same identifier CUDA got.
            self.probe = DeviceProbe(os.environ.get("CUDA_VISIBLE_DEVICES", "0"), enabled=True)
        self.runtime.transcriber = Transcriber(scheduler)
        self.servicer = TranscriptionServicer(self.runtime, settings, self.name, self.aliases)

    def touch(self) -> None:
        self._last_active = time.monotonic()

    async def call(self, fn: Callable[[TranscriptionServicer], Any]) -> Any:
        """Run a unary handler of the loaded servicer, counting the worker busy meanwhile."""
        self._calls += 1
        try:
            return await fn(await self.ready())
        finally:
            self._calls -= 1
            self.touch()

    async def stream(self, fn: Callable[[TranscriptionServicer], AsyncIterator[T]]) -> AsyncIterator[T]:
        self._calls += 1
        try:
            async for item in fn(await self.ready()):
                yield item
        finally:
            self._calls -= 1
            self.touch()


class LoadingTranscription(transcription_pb2_grpc.TranscriptionServiceServicer):
    """TranscriptionService of a worker whose model may not be in memory: each call waits for the model, then
    goes to the real servicer (services.gpu_worker.servicer)."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    async def _refused(self, context: grpc.aio.ServicerContext, err: RequestError) -> None:
        await abort(context, err)

    async def Transcribe(self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._holder.call(lambda s: s.Transcribe(request, context))
        except RequestError as err:
            await self._refused(context, err)

    async def GetConfig(self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._holder.call(lambda s: s.GetConfig(request, context))
        except RequestError as err:
            await self._refused(context, err)

    async def TranscribeWithProgress(
        self, request: pb.TranscribeWithProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        try:
            async for item in self._holder.stream(lambda s: s.TranscribeWithProgress(request, context)):
                yield item
        except RequestError as err:
            await self._refused(context, err)

    async def StreamingTranscribe(
        self, request_iterator: AsyncIterator[pb.StreamingTranscribeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        try:
            async for item in self._holder.stream(lambda s: s.StreamingTranscribe(request_iterator, context)):
                yield item
        except RequestError as err:
            await self._refused(context, err)


async def watch_idle(holder: ModelHolder, unload: asyncio.Event) -> None:
    """Set `unload` once the loaded model has been idle WORKER_IDLE_UNLOAD_S; the worker then drains for two
    health intervals (the gateway stops routing to it) and re-executes itself unloaded."""
    limit = holder.settings.worker_idle_unload_s
    settle = 2 * holder.settings.health_interval_s
    runtime = holder.runtime
    while True:
        await asyncio.sleep(min(1.0, max(0.05, limit / 4)))
        if holder.state != worker_pb2.MODEL_STATE_LOADED or holder.idle_seconds() < limit:
            continue
        if runtime.status != worker_pb2.WORKER_STATUS_SERVING:
            continue
        runtime.set_status(worker_pb2.WORKER_STATUS_NOT_SERVING, f"unloading the model: idle for {limit:g} s")
        log.info("model_unloading", model=holder.name, idle_s=round(holder.idle_seconds(), 1))
        await asyncio.sleep(settle)
        if holder.idle_seconds() >= limit:
            unload.set()
            return
        runtime.set_status(worker_pb2.WORKER_STATUS_SERVING)  # a call came after all: stay loaded
