"""The worker's TranscriptionService, once its model is loaded (`lifecycle` hands calls to it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from services.common import audio
from services.common.config import Settings
from services.common.convert import decode_request_audio, limits_pb
from services.common.errors import RequestError, abort, config_not_first
from services.common.rpclog import BATCH_PRIORITY, PRIORITY_HEADER, RequestLine, request_line
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc
from services.gpu_worker.batching.scheduler import Priority
from services.gpu_worker.batching.transcriber import Transcriber, call_priority
from services.gpu_worker.engines.base import DecodeOptions, EngineResult
from services.gpu_worker.progress import ProgressEvent, progress_pb, transcribe_with_progress
from services.gpu_worker.results import transcribe_response
from services.gpu_worker.runtime import WorkerRuntime
from services.gpu_worker.speakers.embedder import Embeddings, SpeakerJob
from services.gpu_worker.speakers.online import OnlineLabeller
from services.gpu_worker.speakers.options import speaker_options
from services.gpu_worker.streaming.call import StreamCall
from services.gpu_worker.streaming.reader import RequestReader, idle_timeout_error
from services.gpu_worker.streaming.session import StreamingSession
from services.gpu_worker.validation import (
    Limits,
    check_model,
    check_streaming_encoding,
    check_transcribe_encoding,
    decode_options,
    session_config_from,
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
    engine: Transcriber,
    request: pb.TranscribeRequest,
    options: DecodeOptions,
    limits: Limits,
    speakers: SpeakerJob | None = None,
) -> tuple[EngineResult, float, Embeddings | None]:
    started = time.perf_counter()
    samples = decode_request_audio(request, limits.max_audio_seconds, limits.max_decode_ratio)
    if speakers is None:
        return engine.transcribe(samples, options), time.perf_counter() - started, None
    result, embeddings = speakers.run(
        samples, lambda on_windows: engine.transcribe(samples, options, on_windows=on_windows)
    )
    return result, time.perf_counter() - started, embeddings


def _invalid_audio(err: audio.AudioError) -> RequestError:
    code = grpc.StatusCode.OUT_OF_RANGE if err.reason == "AUDIO_TOO_LONG" else grpc.StatusCode.INVALID_ARGUMENT
    return RequestError(code, err.reason, err.message)


def _take_priority(context: grpc.aio.ServicerContext, line: RequestLine) -> None:
    """A batch job's piece (marked by the gateway) has its windows decoded after every interactive call's;
    the call's thread inherits the context, and with it the priority."""
    if any(k == PRIORITY_HEADER and v == BATCH_PRIORITY for k, v in context.invocation_metadata() or ()):
        call_priority.set(Priority.BATCH)
        line.fields["priority"] = BATCH_PRIORITY


async def _refuse(context: grpc.aio.ServicerContext, line: RequestLine, err: audio.AudioError | RequestError) -> None:
    """End the call with the error's status, and record it on the request's canonical line."""
    error = _invalid_audio(err) if isinstance(err, audio.AudioError) else err
    line.fail(error)
    await abort(context, error)


class TranscriptionServicer(transcription_pb2_grpc.TranscriptionServiceServicer):
    def __init__(self, runtime: WorkerRuntime, settings: Settings, model: str, aliases: tuple[str, ...] = ()) -> None:
        self._rt = runtime
        self._settings = settings
        self._limits = limits_from(settings)
        self._model = model  # the name it is served under (RecognitionOptions.model)
        self._aliases = aliases

    def _options(self, options: pb.RecognitionOptions, engine: Transcriber) -> DecodeOptions:
        check_model(options.model, self._model, self._aliases)
        return decode_options(options, self._limits, engine.info)

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranscribeResponse:
        with request_line("Transcribe", context) as line:
            line.fields["audio_bytes"] = len(request.audio_content)
            _take_priority(context, line)
            try:
                engine = self._rt.require_transcriber()
                check_transcribe_encoding(request.encoding)
                options = self._options(request.options, engine)
                speakers = self._speaker_job(request.options)
                if speakers is not None:
                    options = replace(options, word_timestamps=True)  # the gateway labels words
                result, elapsed, embeddings = await self._rt.run(
                    _transcribe_blocking, engine, request, options, self._limits, speakers
                )
            except (audio.AudioError, RequestError) as err:
                await _refuse(context, line, err)
            self._rt.completed += 1
            line.fields.update(audio_s=round(result.duration, 3), rtfx=round(result.duration / max(elapsed, 1e-6), 1))
            response = transcribe_response(result, elapsed, self._rt.worker_id)
            if embeddings is not None:
                response.speaker_embeddings.CopyFrom(embeddings.to_pb())
                line.fields["speaker_windows"] = len(embeddings.starts)
            response.request_id = line.request_id
            return response

    def _speaker_job(self, options: pb.RecognitionOptions) -> SpeakerJob | None:
        """The call's speaker work, when it asks for speaker labels (validated here as in the gateway)."""
        if not options.HasField("diarization_config"):
            return None
        speaker = speaker_options(options.diarization_config, "options.diarization_config")
        return SpeakerJob(
            self._rt.require_speakers(), speaker, "options.diarization_config", self._limits.max_decode_ratio
        )

    async def TranscribeWithProgress(
        self, request: pb.TranscribeWithProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        with request_line("TranscribeWithProgress", context) as line:
            _take_priority(context, line)
            inner = request.request
            line.fields["audio_bytes"] = len(inner.audio_content)
            highest = 0.0
            try:
                engine = self._rt.require_transcriber()
                options = self._options(inner.options, engine)
                speakers = self._speaker_job(inner.options)
                if speakers is not None:
                    options = replace(options, word_timestamps=True)
                max_s = self._limits.max_audio_seconds
                events: AsyncIterator[ProgressEvent] = self._rt.stream(
                    transcribe_with_progress, engine, lambda: decode_request_audio(inner, max_s), options, speakers
                )
                async for event in events:
                    response = progress_pb(event, self._rt.worker_id)
                    highest = response.progress_percent = max(highest, response.progress_percent)
                    if response.HasField("result"):
                        response.result.request_id = line.request_id
                        self._rt.completed += 1
                        line.fields["audio_s"] = round(response.audio_duration.ToNanoseconds() / 1e9, 3)
                    yield response
            except (audio.AudioError, RequestError) as err:
                await _refuse(context, line, err)

    async def StreamingTranscribe(
        self,
        request_iterator: AsyncIterator[pb.StreamingTranscribeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        with request_line("StreamingTranscribe", context) as line, self._rt.stream_open():
            try:
                async for response in self._stream(request_iterator, line.fields):
                    yield response
            except (audio.AudioError, RequestError) as err:
                await _refuse(context, line, err)

    async def _first(self, requests: AsyncIterator[pb.StreamingTranscribeRequest]) -> pb.StreamingConfig | None:
        timeout = self._limits.stream_idle_timeout_s
        try:
            first = await asyncio.wait_for(anext(requests), timeout)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise idle_timeout_error(timeout) from None
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise config_not_first()
        return first.streaming_config

    async def _stream(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest], fields: dict[str, object]
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        config = await self._first(requests)
        if config is None:
            return
        engine = self._rt.require_transcriber()
        check_streaming_encoding(config)
        options = self._options(config.options, engine)
        session_config = session_config_from(config, self._settings)
        resampler = audio.PcmResampler(config.sample_rate_hertz, config.audio_channel_count)
        session = StreamingSession(engine, options, session_config)
        replay_until = 0.0
        if config.HasField("resume"):
            try:
                session.restore(config.resume.state)
            except (ValueError, KeyError, TypeError) as exc:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "BAD_RESUME_STATE",
                    f"streaming_config.resume is not usable: {exc}",
                ) from None
            replay_until = config.resume.replay_until.ToNanoseconds() / 1e9
        speakers = await self._stream_speakers(config)
        call = StreamCall(self._rt, session, config, resampler, self._limits.max_stream_seconds, replay_until, speakers)
        reader = RequestReader(requests, self._limits.stream_idle_timeout_s, self._rt.draining, self._rt.worker_id)
        try:
            async for response in call.run(reader):
                yield response
        finally:
            reader.close()
            fields.update(
                audio_s=round(session.total_seconds, 3),
                decodes=session.decodes,
                utterances=session.utterances,
                words=session.committed_count,
                longest_decode_s=round(session.longest_decode_s, 2),
                decode_s=round(session.decode_seconds, 3),
                interims_skipped=call.interims_skipped,
            )
        self._rt.completed += 1

    async def _stream_speakers(self, config: pb.StreamingConfig) -> OnlineLabeller | None:
        """The stream's online speaker labeller, when it asks for labels: from the resume point's state
        after a failover, else with the known speakers' clips embedded."""
        if config.HasField("diarization_config"):
            diarization, field = config.diarization_config, "diarization_config"
        elif config.options.HasField("diarization_config"):
            diarization, field = config.options.diarization_config, "options.diarization_config"
        else:
            return None
        job = SpeakerJob(
            self._rt.require_speakers(), speaker_options(diarization, field), field, self._limits.max_decode_ratio
        )
        labeller = OnlineLabeller(job.scheduler, job.options.max_speakers)
        if config.HasField("resume") and config.resume.speakers:
            try:
                labeller.restore(config.resume.speakers, config.resume.audio_offset.ToNanoseconds() / 1e9)
            except (ValueError, KeyError, TypeError) as exc:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT, "BAD_RESUME_STATE", f"streaming_config.resume.speakers: {exc}"
                ) from None
            return labeller
        names, references = await self._rt.run_for_stream(job.references)
        return OnlineLabeller(job.scheduler, job.options.max_speakers, names, references)

    async def GetConfig(self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext) -> pb.GetConfigResponse:
        with request_line("GetConfig", context) as line:
            try:
                engine = self._rt.require_transcriber()
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
                models=[
                    pb.ModelInfo(
                        name=self._model,
                        is_default=True,
                        description=info.model,
                        multilingual=info.multilingual,
                        language_codes=list(info.languages),
                        workers=1,
                        serving_workers=1,
                        loaded_workers=1,
                    )
                ],
            )
