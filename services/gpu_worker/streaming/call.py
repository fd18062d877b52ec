"""One StreamingTranscribe call on a worker: read audio, drive the session, send results and speech events.

Requests are read by a task of their own, ahead of the decoder, so a decode in progress never
looks like an idle client and the audio that arrived during a decode is taken in one go. Interim
decodes are skipped while audio is already queued (the stream is behind) or the worker is busy with
other decodes: the decode rate adapts to the CPU, and the decodes that make finals never wait
behind interims nobody would see in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from services.common import audio
from services.common.audio import SAMPLE_RATE
from services.common.convert import duration
from services.common.errors import RequestError, config_twice
from services.gen import transcription_pb2 as pb
from services.gpu_worker.engines.base import Word
from services.gpu_worker.results import alternative
from services.gpu_worker.runtime import WorkerRuntime
from services.gpu_worker.speakers.online import OnlineLabeller
from services.gpu_worker.streaming.session import INTERIM, StreamingSession, StreamUpdate
from services.gpu_worker.streaming.vad import VoiceEvent

#: Largest piece of audio judged before the session may decode: bounds how far a backlog runs ahead.
SLICE_S = 0.5
#: Audio after which a resume point goes to the gateway even with nothing else to send, so the audio
#: it keeps for failover stays short through long silences.
RESUME_EVERY_S = 5.0

DRAINING = "WORKER_DRAINING"

_EVENT_TYPES = {"begin": pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_BEGIN, "end": pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_END}


def stream_results(
    update: StreamUpdate,
    interim: bool,
    with_words: bool,
    language: str,
    processed_s: float,
    speakers: Sequence[str] | None = None,
) -> list[pb.StreamingRecognitionResult]:
    """Protobuf results of one session update: the committed words (one result per speaker when
    `speakers` labels them), then the interim tail."""
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

    if update.final_words and speakers:
        start = 0
        for end in range(1, len(update.final_words) + 1):
            if end == len(update.final_words) or speakers[end] != speakers[start]:
                labelled = result(update.final_words[start:end], True, 1.0)
                labelled.speaker_label = speakers[start]
                for word in labelled.alternatives[0].words:
                    word.speaker_label = speakers[start]
                results.append(labelled)
                start = end
    elif update.final_words:
        results.append(result(update.final_words, True, 1.0))
    if interim and update.interim_words:
        results.append(result(update.interim_words, False, update.stability))
    return results


def event_response(kind: pb.SpeechEventType, sample: int, worker_id: str) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(
        speech_event_type=kind, speech_event_offset=duration(sample / SAMPLE_RATE), worker_id=worker_id
    )


def slices(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, samples.size, size):
        yield samples[i : i + size]


@dataclass
class _Batch:
    """What the reader had queued: audio chunks, then maybe the end of the stream or an error."""

    chunks: list[bytes]
    ended: bool = False
    error: RequestError | None = None


class RequestReader:
    """Reads audio requests into a queue on its own task, enforcing the idle timeout."""

    def __init__(
        self,
        requests: AsyncIterator[pb.StreamingTranscribeRequest],
        idle_timeout_s: float,
        draining: asyncio.Event | None = None,
        worker_id: str = "",
    ) -> None:
        self._requests = requests
        self._idle = idle_timeout_s
        self._queue: asyncio.Queue[bytes | RequestError | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())
        self._drain_task = asyncio.create_task(self._drain(draining, worker_id)) if draining else None

    async def _drain(self, draining: asyncio.Event, worker_id: str) -> None:
        await draining.wait()
        self._task.cancel()
        # The gateway re-sends this stream's unfinished audio to another worker.
        self._queue.put_nowait(
            RequestError(
                grpc.StatusCode.UNAVAILABLE,
                DRAINING,
                f"worker {worker_id} is shutting down: the stream continues on another worker",
            )
        )

    async def _read(self) -> None:
        while True:
            try:
                request = await asyncio.wait_for(anext(self._requests), self._idle)
            except StopAsyncIteration:
                self._queue.put_nowait(None)
                return
            except TimeoutError:
                self._queue.put_nowait(idle_timeout_error(self._idle))
                return
            except grpc.RpcError:
                # The client went away; the call is over and nothing will read what is queued.
                self._queue.put_nowait(None)
                return
            if request.WhichOneof("streaming_request") != "audio_content":
                self._queue.put_nowait(config_twice())
                return
            self._queue.put_nowait(request.audio_content)

    @property
    def pending(self) -> bool:
        """More audio is already queued."""
        return not self._queue.empty()

    async def batch(self) -> _Batch:
        """Wait for at least one item, then take all that are queued."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        batch = _Batch([])
        for item in items:
            if isinstance(item, bytes):
                batch.chunks.append(item)
            elif item is None:
                batch.ended = True
            else:
                batch.error = item
        return batch

    def close(self) -> None:
        self._task.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()


def idle_timeout_error(timeout_s: float) -> RequestError:
    return RequestError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "STREAM_IDLE_TIMEOUT",
        f"no audio for {timeout_s:g} s: send audio continuously (silence included) or close the stream",
    )


def stream_too_long_error(max_s: float) -> RequestError:
    return RequestError(
        grpc.StatusCode.OUT_OF_RANGE,
        "STREAM_TOO_LONG",
        f"the stream passed the {max_s:g} s maximum; results up to there were sent: open a new stream to go on",
    )


class StreamCall:
    """Drives one session from a request reader; `run` yields the responses in order."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        session: StreamingSession,
        config: pb.StreamingConfig,
        resampler: audio.PcmResampler,
        max_stream_s: float,
        replay_until_s: float = 0.0,
        speakers: OnlineLabeller | None = None,
    ) -> None:
        self._rt = runtime
        self._session = session
        self._speakers = speakers
        self._config = config
        self._resampler = resampler
        self._max_samples = round(max_stream_s * SAMPLE_RATE)
        self._max_stream_s = max_stream_s
        self._with_words = config.options.enable_word_time_offsets
        self._replay_until = round(replay_until_s * SAMPLE_RATE)
        self._marked_at = 0  # stream sample of the last resume point sent
        self.done = False  # single_utterance ended the stream

    async def run(self, reader: RequestReader) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        session = self._session
        while not self.done:
            batch = await reader.batch()
            samples = [self._resampler.feed(chunk) for chunk in batch.chunks]
            if batch.ended:
                samples.append(self._resampler.flush())
            pcm = np.concatenate(samples) if samples else np.zeros(0, dtype=np.float32)
            room = self._max_samples - round(session.total_seconds * SAMPLE_RATE)
            too_long = pcm.size > room
            pcm = pcm[: max(room, 0)]
            pieces = list(slices(pcm, round(SLICE_S * SAMPLE_RATE)))
            for i, piece in enumerate(pieces):
                session.add_audio(piece)
                if self._speakers is not None:
                    self._speakers.add_audio(piece)
                # Interim decodes wait while more audio is already here: they would be stale at once.
                # Audio replayed after a failover is decoded as it was live, so the stream decodes
                # exactly as it did on its first worker.
                replaying = round(session.total_seconds * SAMPLE_RATE) <= self._replay_until
                behind = not replaying and (
                    i < len(pieces) - 1 or reader.pending or batch.ended or too_long or bool(batch.error)
                )
                async for response in self._settle(behind):
                    yield self._mark(response)
                if self.done:
                    return
            if batch.error is not None and batch.error.reason == DRAINING:
                raise batch.error  # not finished here: another worker goes on from the last resume point
            if round(session.total_seconds * SAMPLE_RATE) - self._marked_at >= RESUME_EVERY_S * SAMPLE_RATE:
                yield self._mark(pb.StreamingTranscribeResponse(worker_id=self._rt.worker_id))
            if too_long or batch.ended or batch.error is not None:
                async for response in self._finish():
                    yield self._mark(response)
                if too_long:
                    raise stream_too_long_error(self._max_stream_s)
                if batch.error is not None:
                    raise batch.error
                return

    def _mark(self, response: pb.StreamingTranscribeResponse) -> pb.StreamingTranscribeResponse:
        """Attach the session's resume point: the gateway then holds no result without the state after it."""
        offset, state = self._session.snapshot()
        response.resume_point.audio_offset.CopyFrom(duration(offset))
        response.resume_point.state = state
        if self._speakers is not None:
            response.resume_point.speakers = self._speakers.snapshot()
        self._marked_at = round(self._session.total_seconds * SAMPLE_RATE)
        return response

    async def _settle(self, behind: bool) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        """Judge the new audio; finalize ended utterances; decode when due and the audio is caught up."""
        session = self._session
        while True:
            for event in session.detect():
                for response in self._events(event):
                    yield response
            if not session.closing:
                break
            for response in self._finalized(await self._decode(session.process)):
                yield response
            if self._config.single_utterance:
                self.done = True
                return
        kind = session.pending_decode()
        if kind is None:
            return
        if kind == INTERIM and not session.needs_commits and (behind or self._worker_busy()):
            # Interims are what an overloaded worker sheds first, so finals keep their latency.
            return
        for response in await self._decode(session.process):
            yield response

    def _worker_busy(self) -> bool:
        return self._rt.streams_backlogged()

    async def _finish(self) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        session = self._session
        async for response in self._settle(behind=False):
            yield response
        if self.done:
            return
        ended = session.in_speech
        if ended:
            for response in self._events(VoiceEvent("end", round(session.total_seconds * SAMPLE_RATE))):
                yield response
        results = await self._decode(session.finish)
        for response in self._finalized(results) if ended else results:
            yield response

    def _events(self, event: VoiceEvent) -> list[pb.StreamingTranscribeResponse]:
        out = []
        worker_id = self._rt.worker_id
        if self._config.enable_voice_activity_events:
            out.append(event_response(_EVENT_TYPES[event.kind], event.sample, worker_id))
        if event.kind == "end" and self._config.single_utterance:
            out.append(event_response(pb.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE, event.sample, worker_id))
        return out

    async def _decode(self, step: Callable[[], StreamUpdate]) -> list[pb.StreamingTranscribeResponse]:
        """Run a session step (a decode) and turn its update into responses, its finals labelled by speaker
        when the stream asked for that."""
        update = await self._rt.run_for_stream(step)
        labels = None
        if self._speakers is not None and update.final_words:
            labels = await self._rt.run_for_stream(self._speakers.label, update.final_words)
        return self._results(update, labels)

    def _finalized(self, responses: list[pb.StreamingTranscribeResponse]) -> list[pb.StreamingTranscribeResponse]:
        """An ended utterance's final results, the last one marked UTTERANCE_FINALIZED when the client asked:
        in the same response, so no resume point can fall between the words and the mark."""
        if not (self._config.enable_voice_activity_events and self._config.enable_utterance_finalized_events):
            return responses
        if not responses:
            responses = [pb.StreamingTranscribeResponse(worker_id=self._rt.worker_id)]
        responses[-1].speech_event_type = pb.SPEECH_EVENT_TYPE_UTTERANCE_FINALIZED
        responses[-1].speech_event_offset.CopyFrom(duration(self._session.total_seconds))
        return responses

    def _results(self, update: StreamUpdate, labels: list[str] | None = None) -> list[pb.StreamingTranscribeResponse]:
        session = self._session
        results = stream_results(
            update, self._config.interim_results, self._with_words, session.language, session.total_seconds, labels
        )
        return [pb.StreamingTranscribeResponse(results=[r], worker_id=self._rt.worker_id) for r in results]
