"""The gateway's servicers: TranscriptionService proxied to workers, and FleetService."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
import structlog

from services.common import audio
from services.common.auth import client_identity
from services.common.config import Settings
from services.common.convert import decode_request_audio, limits_pb
from services.common.errors import RequestError, abort
from services.common.rpclog import REQUEST_ID_HEADER, RequestLine, request_line
from services.gateway.limits import StreamLimiter
from services.gateway.metrics import GatewayStats
from services.gateway.recordings import shard, upload
from services.gateway.recordings.pieces import Source
from services.gateway.recordings.pipeline import Pipeline
from services.gateway.recordings.progress import ProgressSeen
from services.gateway.recordings.upload import Spool
from services.gateway.relay import StreamRelay
from services.gateway.routing.configs import ModelConfigs
from services.gateway.routing.dispatch import MAX_TRIES, Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry, WorkerHandle
from services.gateway.speakers.diarize import RecordingSpeakers
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()


def _metadata(line: RequestLine) -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_HEADER, line.request_id),)


def _passthrough(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, grpc.aio.Metadata | None]:
    """A worker's error as the client should see it, rich details (ErrorInfo) included."""
    trailing = exc.trailing_metadata()
    return exc.code(), exc.details() or "", trailing


class TranscriptionProxy(transcription_pb2_grpc.TranscriptionServiceServicer):
    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        stats: GatewayStats,
        settings: Settings,
        models: FleetModels,
    ) -> None:
        self._registry = registry
        self._dispatch = dispatcher
        self._stats = stats
        self._settings = settings
        self._models = models
        self._configs = ModelConfigs(registry, models)
        self.streams = StreamLimiter(settings.max_concurrent_streams, settings.max_streams_per_client)

    def _pick(self, tried: set[str], model: str | None = None) -> WorkerHandle:
        handle = self._registry.pick(model, exclude=tried)
        if handle is None:
            raise self._dispatch.no_worker(model)
        return handle

    def _model(self, options: pb.RecognitionOptions, line: RequestLine) -> str:
        """The served model the options name, written back into them for the worker."""
        model = self._models.resolve(options.model)
        options.model = line.fields["model"] = model
        return model

    async def _fail(
        self,
        context: grpc.aio.ServicerContext,
        line: RequestLine,
        exc: grpc.aio.AioRpcError,
    ) -> None:
        code, details, trailing = _passthrough(exc)
        line.fail_code(code, "WORKER_ERROR")
        await context.abort(code, details, trailing_metadata=tuple(trailing or ()))

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranscribeResponse:
        with request_line("Transcribe", context, self._stats.observe) as line:
            line.fields["audio_bytes"] = len(request.audio_content)
            try:
                model = self._model(request.options, line)
                speakers = RecordingSpeakers.of(request.options)
                pieces = await self._shard_plan(request, model)
                if pieces is None:
                    response = await self._unary(request, context, line, model)
                    if speakers is not None:
                        speakers.add(response, 0.0)
                else:
                    response = await self._sharded(pieces, context, line, model, speakers)
                if speakers is not None:
                    speakers.finish(response)
                    line.fields["speakers"] = len(response.speakers)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            except grpc.aio.AioRpcError as exc:
                await self._fail(context, line, exc)
            response.request_id = line.request_id
            line.fields.update(
                worker=response.worker_id, audio_s=round(response.audio_duration.ToNanoseconds() / 1e9, 3)
            )
            return response

    async def _unary(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext, line: RequestLine, model: str
    ) -> pb.TranscribeResponse:
        """One call on one worker of its model; a worker that goes away mid-call is replaced (the call is
        idempotent)."""
        tried: set[str] = set()
        attempt = 0
        while True:
            attempt += 1
            async with self._dispatch.slot(tried, context.time_remaining(), model) as handle:
                tried.add(handle.name)
                try:
                    response: pb.TranscribeResponse = await handle.transcription.Transcribe(
                        request, timeout=context.time_remaining(), metadata=_metadata(line)
                    )
                    return response
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= MAX_TRIES:
                        raise
                    handle.mark_unreachable(f"call failed: {exc.details()}")
                    log.warning("worker_unavailable_retrying", worker=handle.name, details=exc.details())

    async def _shard_plan(
        self, request: pb.TranscribeRequest, model: str
    ) -> list[tuple[float, pb.TranscribeRequest]] | None:
        """Pieces of a long recording for parallel transcription on its model's idle workers, or None to send it
        whole."""
        idle = shard.idle_workers(self._registry.of(model))
        threshold = self._settings.shard_min_seconds
        if idle < 2 or threshold <= 0:
            return None
        try:
            if request.encoding == pb.AUDIO_ENCODING_LINEAR16:
                channels = audio.check_pcm_format(request.sample_rate_hertz, request.audio_channel_count)
                duration = len(request.audio_content) / (2 * channels * request.sample_rate_hertz)
            else:
                declared = await asyncio.to_thread(shard.container_duration, request.audio_content)
                duration = declared or 0.0
            if duration < threshold or duration > self._settings.max_audio_seconds:
                return None
            samples = await asyncio.to_thread(decode_request_audio, request, self._settings.max_audio_seconds)
        except audio.AudioError:
            return None  # the worker answers with the precise error
        seconds = samples.size / audio.SAMPLE_RATE
        pieces = shard.piece_count(seconds, idle)
        # Each piece must also fit in one gRPC message.
        pieces = max(pieces, math.ceil(samples.size * 2 / (0.9 * self._settings.max_message_bytes)))
        if pieces < 2:
            return None
        bounds = [0, *shard.split_points(samples, pieces), samples.size]
        return [
            (
                start / audio.SAMPLE_RATE,
                pb.TranscribeRequest(
                    audio_content=shard.pcm16(samples[start:end]),
                    encoding=pb.AUDIO_ENCODING_LINEAR16,
                    sample_rate_hertz=audio.SAMPLE_RATE,
                    audio_channel_count=1,
                    options=RecordingSpeakers.piece_options(request.options, index),
                ),
            )
            for index, (start, end) in enumerate(itertools.pairwise(bounds))
        ]

    async def _sharded(
        self,
        pieces: list[tuple[float, pb.TranscribeRequest]],
        context: grpc.aio.ServicerContext,
        line: RequestLine,
        model: str,
        speakers: RecordingSpeakers | None = None,
    ) -> pb.TranscribeResponse:
        started = time.perf_counter()
        line.fields["pieces"] = len(pieces)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    (offset, group.create_task(self._unary(piece, context, line, model))) for offset, piece in pieces
                ]
        except* (RequestError, grpc.aio.AioRpcError) as failed:
            raise failed.exceptions[0] from None
        if speakers is not None:
            for offset, task in tasks:
                speakers.add(task.result(), offset)
        merged = shard.merge([(offset, task.result()) for offset, task in tasks])
        merged.processing_time.FromNanoseconds(round((time.perf_counter() - started) * 1e9))
        return merged

    async def StreamingTranscribe(
        self, request_iterator: AsyncIterator[pb.StreamingTranscribeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        with request_line("StreamingTranscribe", context, self._stats.observe) as line:
            client = line.fields["client"] = client_identity(context)
            try:
                self.streams.acquire(client)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            relay = StreamRelay(
                self._registry, self._dispatch, line, context, self._settings.stream_failover_wait_s, self._models
            )
            self._stats.active_streams += 1
            try:
                with self.streams.held(client):
                    async for response in relay.run(request_iterator):
                        yield response
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            except grpc.aio.AioRpcError as exc:
                await self._fail(context, line, exc)
            finally:
                self._stats.active_streams -= 1

    async def GetConfig(self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext) -> pb.GetConfigResponse:
        with request_line("GetConfig", context, self._stats.observe) as line:
            try:
                model = self._models.resolve(request.model)
                line.fields["model"] = model
                response = await self._configs.describe(model, line.request_id)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            except grpc.aio.AioRpcError as exc:
                await self._fail(context, line, exc)
            response.worker_count = self._registry.serving_count()
            response.limits.CopyFrom(limits_pb(self._settings))
            del response.models[:]
            response.models.extend(await self._configs.models(line.request_id))
            return response

    async def TranscribeWithProgress(
        self, request: pb.TranscribeWithProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        with request_line("TranscribeWithProgress", context, self._stats.observe) as line:
            line.fields["audio_bytes"] = len(request.request.audio_content)
            try:
                model = self._model(request.request.options, line)
                speakers = RecordingSpeakers.of(request.request.options)
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            source = await self._split_source(request.request, model)
            if source is not None:
                async for report in self._pipelined(source, request.request.options, context, line, model):
                    yield report
                return
            tried: set[str] = set()
            seen = ProgressSeen()
            for attempt in itertools.count(1):
                try:
                    # A slot in the fleet queue, like Transcribe: progress calls are unary work too.
                    async with self._dispatch.slot(tried, context.time_remaining(), model) as handle:
                        tried.add(handle.name)
                        line.fields["worker"] = handle.name
                        call = handle.transcription.TranscribeWithProgress(
                            request, timeout=context.time_remaining(), metadata=_metadata(line)
                        )
                        try:
                            async for response in call:
                                final = response.HasField("result")
                                if speakers is not None:
                                    speakers.interim(response.segments)
                                    if final:
                                        speakers.add(response.result, 0.0)
                                        speakers.finish(response.result)
                                if final:
                                    response.result.request_id = line.request_id
                                    line.fields["audio_s"] = round(response.audio_duration.ToNanoseconds() / 1e9, 3)
                                new = seen.new_part(response)
                                if new is not None:
                                    yield new
                                if final:
                                    return  # a worker lost after its result must not fail a complete call
                        finally:
                            # A client that went away closes this generator (GeneratorExit, no task
                            # cancellation): without this the worker would transcribe to the end for nobody.
                            call.cancel()
                    return
                except RequestError as err:
                    line.fail(err)
                    await abort(context, err)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < MAX_TRIES:
                        # Another worker starts over; the client gets only what it has not seen yet.
                        handle.mark_unreachable(f"call failed: {exc.details()}")
                        log.warning(
                            "worker_unavailable_retrying", worker=handle.name, details=exc.details(), sent=seen.reports
                        )
                        continue
                    await self._fail(context, line, exc)

    async def TranscribeUpload(
        self, request_iterator: AsyncIterator[pb.TranscribeUploadRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeUploadResponse]:
        with request_line("TranscribeUpload", context, self._stats.observe) as line:
            try:
                self._pick(set())  # with no worker serving, refuse before the client sends the whole file
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            spool = Spool(self._settings.run_dir, self._settings.max_upload_bytes)
            try:
                try:
                    config = await upload.receive(request_iterator, spool)
                except RequestError as err:
                    line.fail(err)
                    await abort(context, err)
                line.fields["upload_bytes"] = spool.size
                try:
                    model = self._model(config.options, line)
                    RecordingSpeakers.of(config.options)
                except RequestError as err:
                    line.fail(err)
                    await abort(context, err)
                source = Source(spool.path, config.encoding, config.sample_rate_hertz, config.audio_channel_count)
                async for report in self._pipelined(source, config.options, context, line, model):
                    yield pb.TranscribeUploadResponse(progress=report)
            finally:
                # However the call ends (done, refused, cancelled, past its deadline), the file goes.
                spool.remove()

    async def _split_source(self, request: pb.TranscribeRequest, model: str) -> Source | None:
        """The recording as pieces for every serving worker of its model, when it is long enough; None to send it
        whole."""
        serving = self._registry.serving_count(model)
        threshold = self._settings.shard_min_seconds
        if serving < 2 or threshold <= 0:
            return None
        source = Source(request.audio_content, request.encoding, request.sample_rate_hertz, request.audio_channel_count)
        try:
            declared = await asyncio.to_thread(source.declared_seconds)
        except audio.AudioError:
            return None  # the worker answers with the precise error
        if declared < threshold or declared > self._settings.max_audio_seconds:
            return None
        return source

    async def _pipelined(
        self,
        source: Source,
        options: pb.RecognitionOptions,
        context: grpc.aio.ServicerContext,
        line: RequestLine,
        model: str,
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        """Progress reports of one recording split over the workers (services.gateway.recordings.pipeline)."""
        pipeline = Pipeline(source, options, self._registry, self._dispatch, self._settings, context, line, model)
        try:
            async with aclosing(pipeline.reports()) as reports:
                async for report in reports:
                    yield report
        except audio.AudioError as err:
            code = grpc.StatusCode.OUT_OF_RANGE if err.reason == "AUDIO_TOO_LONG" else grpc.StatusCode.INVALID_ARGUMENT
            error = RequestError(code, err.reason, err.message)
            line.fail(error)
            await abort(context, error)
        except RequestError as error:
            line.fail(error)
            await abort(context, error)
        except grpc.aio.AioRpcError as exc:
            await self._fail(context, line, exc)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, registry: Registry, stats: GatewayStats, models: FleetModels) -> None:
        self._registry = registry
        self._stats = stats
        self._models = models

    async def ListWorkers(
        self, request: fleet_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.ListWorkersResponse:
        return fleet_pb2.ListWorkersResponse(
            workers=[w.to_pb() for w in self._registry.sorted()],
            stats=self._stats.to_pb(),
            models=self._stats.models_pb(),
        )
