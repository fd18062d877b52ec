"""gRPC servicers of a worker: TranscriptionService and WorkerService."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from services.common import audio
from services.common.config import Settings
from services.common.convert import alternative, decode_request_audio, duration, limits_pb, transcribe_response
from services.common.errors import RequestError, abort
from services.common.rpclog import request_line
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.gpu_worker.device import DeviceProbe, process_rss_bytes
from services.gpu_worker.engine import DecodeOptions, Engine, EngineResult, Word
from services.gpu_worker.progress import ProgressEvent, progress_pb, transcribe_with_progress
from services.gpu_worker.runtime import WorkerRuntime
from services.gpu_worker.streaming import StreamingSession, StreamUpdate
from services.gpu_worker.validation import (
    Limits,
    check_streaming_encoding,
    check_transcribe_encoding,
    decode_options,
)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_audio_seconds=settings.max_audio_seconds,
        max_stream_seconds=settings.max_stream_seconds,
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
        max_beam_size=settings.max_beam_size,
        max_initial_prompt_chars=settings.max_initial_prompt_chars,
        max_decode_ratio=settings.max_decode_ratio,
    )


def _transcribe_blocking(
    engine: Engine, request: pb.TranscribeRequest, options: DecodeOptions, limits: Limits
) -> tuple[EngineResult, float]:
    started = time.perf_counter()
    samples = decode_request_audio(request, limits.max_audio_seconds, limits.max_decode_ratio)
    result = engine.transcribe(samples, options)
    return result, time.perf_counter() - started


def _invalid_audio(err: audio.AudioError) -> RequestError:
    code = grpc.StatusCode.OUT_OF_RANGE if err.reason == "AUDIO_TOO_LONG" else grpc.StatusCode.INVALID_ARGUMENT
    return RequestError(code, err.reason, err.message)


def stream_results(
    update: StreamUpdate, interim: bool, with_words: bool, language: str, processed_s: float
) -> list[pb.StreamingRecognitionResult]:
    """Protobuf results of one session update: the committed words, then the interim tail."""
    results = []

    def result(words: tuple[Word, ...], final: bool, stability: float) -> pb.StreamingRecognitionResult:
        return pb.StreamingRecognitionResult(
            alternatives=[alternative(words, StreamUpdate.text(words), 0.0, with_words)],
            is_final=final,
            stability=stability,
            result_start_offset=duration(words[0].start),
            result_end_offset=duration(words[-1].end if final else max(words[-1].end, processed_s)),
            language_code=language,
        )

    if update.final_words:
        results.append(result(update.final_words, True, 1.0))
    if interim and update.interim_words:
        results.append(result(update.interim_words, False, update.stability))
    return results


class TranscriptionServicer(transcription_pb2_grpc.TranscriptionServiceServicer):
    def __init__(self, runtime: WorkerRuntime, settings: Settings) -> None:
        self._rt = runtime
        self._settings = settings
        self._limits = limits_from(settings)

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranscribeResponse:
        with request_line("Transcribe", context) as line:
            line.fields["audio_bytes"] = len(request.audio_content)
            try:
                engine = self._rt.require_engine()
                check_transcribe_encoding(request.encoding)
                options = decode_options(request.options, self._limits, engine.info)
                result, elapsed = await self._rt.run(_transcribe_blocking, engine, request, options, self._limits)
            except audio.AudioError as err:
                line.fail(_invalid_audio(err))
                await abort(context, _invalid_audio(err))
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            self._rt.completed += 1
            line.fields.update(audio_s=round(result.duration, 3), rtfx=round(result.duration / max(elapsed, 1e-6), 1))
            response = transcribe_response(result, elapsed, self._rt.worker_id)
            response.request_id = line.request_id
            return response

    async def TranscribeWithProgress(
        self, request: pb.TranscribeWithProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        with request_line("TranscribeWithProgress", context) as line:
            inner = request.request
            line.fields["audio_bytes"] = len(inner.audio_content)
            highest = 0.0
            try:
                engine = self._rt.require_engine()
                options = decode_options(inner.options, self._limits, engine.info)
                max_s = self._limits.max_audio_seconds
                events: AsyncIterator[ProgressEvent] = self._rt.stream(
                    transcribe_with_progress, engine, lambda: decode_request_audio(inner, max_s), options
                )
                async for event in events:
                    response = progress_pb(event, self._rt.worker_id)
                    highest = response.progress_percent = max(highest, response.progress_percent)
                    if response.HasField("result"):
                        response.result.request_id = line.request_id
                        self._rt.completed += 1
                        line.fields["audio_s"] = round(response.audio_duration.ToNanoseconds() / 1e9, 3)
                    yield response
            except audio.AudioError as err:
                line.fail(_invalid_audio(err))
                await abort(context, _invalid_audio(err))
            except RequestError as err:
                line.fail(err)
                await abort(context, err)

    async def StreamingTranscribe(
        self,
        request_iterator: AsyncIterator[pb.StreamingTranscribeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        with request_line("StreamingTranscribe", context) as line:
            self._rt.streams += 1
            try:
                async for response in self._stream(request_iterator, line.fields):
                    yield response
            except audio.AudioError as err:
                line.fail(_invalid_audio(err))
                await abort(context, _invalid_audio(err))
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            finally:
                self._rt.streams -= 1

    async def _next(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest]
    ) -> pb.StreamingTranscribeRequest | None:
        """The next request; None at the end. Ends the stream when idle too long or when draining."""
        timeout = self._limits.stream_idle_timeout_s
        reading = asyncio.ensure_future(anext(requests))
        draining = asyncio.ensure_future(self._rt.draining.wait())
        done, _ = await asyncio.wait({reading, draining}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        draining.cancel()
        if reading in done:
            try:
                return reading.result()
            except StopAsyncIteration:
                return None
        reading.cancel()
        if draining in done:
            # The gateway re-sends this stream's unfinished audio to another worker.
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "WORKER_DRAINING",
                f"worker {self._rt.worker_id} is shutting down: the stream continues on another worker",
            )
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "STREAM_IDLE_TIMEOUT",
            f"no audio for {timeout:g} s: send audio continuously (silence included) or close the stream",
        )

    async def _stream(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest], fields: dict[str, object]
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        first = await self._next(requests)
        if first is None:
            return
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "CONFIG_NOT_FIRST",
                "the first StreamingTranscribeRequest must carry streaming_config, and only it",
            )
        config = first.streaming_config
        engine = self._rt.require_engine()
        check_streaming_encoding(config)
        options = decode_options(config.options, self._limits, engine.info)
        resampler = audio.PcmResampler(config.sample_rate_hertz, config.audio_channel_count)
        session = StreamingSession(engine, options)
        if config.HasField("resume"):
            try:
                session.restore(config.resume.state)
            except (ValueError, KeyError, TypeError) as exc:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "BAD_RESUME_STATE",
                    f"streaming_config.resume is not usable: {exc}",
                ) from None
        interval = self._settings.stream_interim_interval_s
        with_words = config.options.enable_word_time_offsets
        worker_id = self._rt.worker_id

        def responses(update: StreamUpdate) -> list[pb.StreamingTranscribeResponse]:
            results = stream_results(
                update, config.interim_results, with_words, session.language, session.total_seconds
            )
            out = [pb.StreamingTranscribeResponse(results=[r], worker_id=worker_id) for r in results]
            if not out:
                out.append(pb.StreamingTranscribeResponse(worker_id=worker_id))
            # The resume point rides on the message that carries the finals it accounts for, so the
            # gateway never holds a final without the state that follows it.
            offset, state = session.snapshot()
            out[0].resume_point.audio_offset.CopyFrom(duration(offset))
            out[0].resume_point.state = state
            return out

        while True:
            request = await self._next(requests)
            if request is None:
                break
            if request.WhichOneof("streaming_request") != "audio_content":
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "CONFIG_TWICE",
                    "streaming_config may only be sent once, in the first request; later requests carry audio_content",
                )
            session.add_audio(resampler.feed(request.audio_content))
            if session.total_seconds > self._limits.max_stream_seconds:
                for response in responses(await self._rt.run(session.finish)):
                    yield response
                raise RequestError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    "STREAM_TOO_LONG",
                    f"the stream passed the {self._limits.max_stream_seconds:g} s maximum; results up to "
                    "there were sent: open a new stream to go on",
                )
            if session.unprocessed_seconds >= interval:
                for response in responses(await self._rt.run(session.process)):
                    yield response
        session.add_audio(resampler.flush())
        for response in responses(await self._rt.run(session.finish)):
            yield response
        self._rt.completed += 1
        fields.update(audio_s=round(session.total_seconds, 3), decodes=session.decodes)

    async def GetConfig(self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext) -> pb.GetConfigResponse:
        with request_line("GetConfig", context) as line:
            try:
                engine = self._rt.require_engine()
            except RequestError as err:
                line.fail(err)
                await abort(context, err)
            info = engine.info
            return pb.GetConfigResponse(
                model=info.model,
                engine=info.name,
                device=info.device,
                compute_type=info.compute_type,
                language_codes=list(info.languages),
                multilingual=info.multilingual,
                sample_rates_hertz=list(audio.SUPPORTED_SAMPLE_RATES),
                encodings=[pb.AUDIO_ENCODING_CONTAINER, pb.AUDIO_ENCODING_LINEAR16],
                limits=limits_pb(self._settings),
                worker_count=1,
            )


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, runtime: WorkerRuntime, probe: DeviceProbe, settings: Settings) -> None:
        self._rt = runtime
        self.probe = probe
        self._settings = settings

    def health(self) -> worker_pb2.WorkerHealth:
        rt = self._rt
        engine = rt.engine
        device = self.probe.read(rt.pid)
        on_gpu = engine is not None and engine.info.device_kind == "cuda"
        health = worker_pb2.WorkerHealth(
            worker_id=rt.worker_id,
            process_num=rt.process_num,
            pid=rt.pid,
            device_kind=worker_pb2.DEVICE_KIND_CUDA if on_gpu else worker_pb2.DEVICE_KIND_CPU,
            device_index=self._settings.worker_device_id if on_gpu else 0,
            process_rss_bytes=process_rss_bytes(),
            model=engine.info.model if engine else "",
            compute_type=engine.info.compute_type if engine else "",
            engine=engine.info.name if engine else "",
            active_requests=rt.active,
            queued_requests=rt.queued,
            max_concurrent_requests=rt.concurrency,
            status=rt.status,
            status_reason=rt.status_reason,
            uptime=duration(time.monotonic() - rt.started),
            requests_completed=rt.completed,
            active_streams=rt.streams,
        )
        if on_gpu:
            health.gpu_name, health.gpu_uuid = device.gpu_name, device.gpu_uuid
            for field, value in (
                ("vram_total_bytes", device.vram_total),
                ("vram_used_bytes", device.vram_used),
                ("vram_free_bytes", device.vram_free),
                ("vram_process_bytes", device.vram_process),
                ("gpu_utilization_percent", device.utilization_percent),
            ):
                if value is not None:
                    setattr(health, field, value)
        return health

    async def GetWorkerHealth(
        self, request: worker_pb2.GetWorkerHealthRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetWorkerHealthResponse:
        return worker_pb2.GetWorkerHealthResponse(health=self.health())
