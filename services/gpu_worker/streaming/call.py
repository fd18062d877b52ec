"""One StreamingTranscribe call on a worker: drive the session from the request reader, send results.

The session's deciding decodes (pauses, utterance ends, commits) run in order, one at a time, and are
never skipped: they make the finals, and a moved stream must make the same ones. Interims are shown
only while they are cheap: one at a time per stream, decoded while the stream goes on (a final never
waits for its own stream's interim), and not at all while the stream is behind (a backlog, a replay)
or while other live-stream decodes wait in the worker's queue. A loaded worker sheds interims first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import structlog

from services.common import audio
from services.common.audio import SAMPLE_RATE
from services.common.convert import duration
from services.gen import transcription_pb2 as pb
from services.gpu_worker.engines.base import EngineResult, Word
from services.gpu_worker.results import alternative
from services.gpu_worker.runtime import WorkerRuntime
from services.gpu_worker.speakers.online import OnlineLabeller
from services.gpu_worker.streaming.decoded import InterimRequest
from services.gpu_worker.streaming.reader import DRAINING, Batch, RequestReader, stream_too_long_error
from services.gpu_worker.streaming.session import FINALIZE, StreamingSession, StreamUpdate
from services.gpu_worker.streaming.vad import VoiceEvent

#: Audio after which a resume point goes to the gateway even with nothing else to send, so the audio
#: it keeps for failover stays short through long silences.
RESUME_EVERY_S = 5.0

log = structlog.get_logger()

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
        self._arrivals: deque[tuple[int, float]] = deque()  # (stream sample a chunk ended at, when it came)
        self._detected_wall = 0.0  # when the decision behind the latest decode was taken
        self._interim: asyncio.Future[EngineResult] | None = None
        self._interim_request: InterimRequest | None = None
        self.interims_skipped = 0
        self.done = False  # single_utterance ended the stream

    async def run(self, reader: RequestReader) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        reading: asyncio.Task[Batch] | None = asyncio.ensure_future(reader.batch())
        try:
            while not self.done and reading is not None:
                waits: set[asyncio.Future[object]] = {reading}  # type: ignore[arg-type]
                if self._interim is not None:
                    waits.add(self._interim)  # type: ignore[arg-type]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if self._interim is not None and self._interim.done():
                    for response in self._interim_results():
                        yield self._mark(response)
                if not reading.done():
                    continue
                batch = reading.result()
                last = batch.ended or batch.error is not None
                reading = None if last else asyncio.ensure_future(reader.batch())
                async for response in self._take(batch, reader):
                    yield response
        finally:
            if reading is not None:
                reading.cancel()
            if self._interim is not None:
                self._interim.cancel()

    async def _take(self, batch: Batch, reader: RequestReader) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        """Add a batch of audio, make every decode it brings due, and end the stream if the batch ends it."""
        session = self._session
        samples = [self._resampler.feed(chunk) for chunk in batch.chunks]
        end = round(session.total_seconds * SAMPLE_RATE)
        for piece, arrived in zip(samples, batch.arrived, strict=True):
            end += piece.size
            self._arrivals.append((end, arrived))
        if batch.ended:
            samples.append(self._resampler.flush())
        pcm = np.concatenate(samples) if samples else np.zeros(0, dtype=np.float32)
        room = self._max_samples - round(session.total_seconds * SAMPLE_RATE)
        too_long = pcm.size > room
        kept = pcm[: max(room, 0)]
        session.add_audio(kept)
        if self._speakers is not None:
            self._speakers.add_audio(kept)
        async for response in self._settle():
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
        replaying = round(session.total_seconds * SAMPLE_RATE) <= self._replay_until
        self._maybe_interim(behind=reader.pending or replaying)

    def _mark(
        self, response: pb.StreamingTranscribeResponse, decoding_until: float | None = None
    ) -> pb.StreamingTranscribeResponse:
        """Attach the session's resume point: the gateway then holds no result without the state after it.
        `decoding_until`: the point goes out just before a deciding decode of the audio up to there."""
        if response.HasField("resume_point"):
            return response  # marked already, just before a decode
        offset, state = self._session.snapshot()
        response.resume_point.audio_offset.CopyFrom(duration(offset))
        response.resume_point.state = state
        if decoding_until is not None:
            response.resume_point.decoding_until.CopyFrom(duration(decoding_until))
        if self._speakers is not None:
            response.resume_point.speakers = self._speakers.snapshot()
        self._marked_at = round(self._session.total_seconds * SAMPLE_RATE)
        return response

    def _decoding(self, until_s: float) -> pb.StreamingTranscribeResponse:
        """The point before a deciding decode: a worker that dies inside it is known to have (relay.CrashWatch)."""
        return self._mark(pb.StreamingTranscribeResponse(worker_id=self._rt.worker_id), until_s)

    async def _settle(self) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        """Judge the new audio, making each deciding decode where it falls due, until all is judged."""
        session = self._session
        while True:
            for event in session.detect():
                for response in self._events(event):
                    yield response
            kind = session.pending_decode()
            if kind is None:
                return
            # The stream's interim, if still queued, would only delay this decode and be stale after it.
            self._drop_interim()
            yield self._decoding(session.judged_seconds)
            # After the point went out: a worker that dies now left the gateway knowing where.
            log.info("stream_decoding", kind=kind, until_s=round(session.judged_seconds, 3))
            self._detected_wall = time.monotonic()
            responses = await self._decode(session.process)
            if kind == FINALIZE:
                responses = self._finalized(responses, session.judged_seconds)
            for response in responses:
                yield response
            if kind == FINALIZE and self._config.single_utterance:
                self.done = True
                return

    def _maybe_interim(self, behind: bool) -> None:
        """Start an interim decode when one is due and cheap: the stream caught up, none of its own in
        flight, and no other live-stream decode waiting in the worker."""
        session = self._session
        if self._interim is not None or not session.interim_due():
            return
        if behind or not self._rt.interims_welcome():
            self.interims_skipped += 1
            return
        request = session.prepare_interim()
        if request is None:
            return
        self._interim_request = request
        self._interim = asyncio.ensure_future(self._rt.run_for_stream(session.decode_interim, request))

    def _drop_interim(self) -> None:
        if self._interim is not None and not self._interim.done():
            self._interim.cancel()  # a window still queued leaves the scheduler; one running finishes unseen

    def _interim_results(self) -> list[pb.StreamingTranscribeResponse]:
        task, request = self._interim, self._interim_request
        self._interim = self._interim_request = None
        if task is None or request is None or task.cancelled():
            return []
        if task.exception() is not None:
            log.warning("stream_interim_failed", error=str(task.exception()))
            return []
        update = self._session.interim_update(request, task.result())
        return [] if update is None else self._results(update)

    async def _finish(self) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        session = self._session
        async for response in self._settle():
            yield response
        if self.done:
            return
        ended = session.in_speech
        if ended:
            for response in self._events(VoiceEvent("end", round(session.total_seconds * SAMPLE_RATE))):
                yield response
        yield self._decoding(session.total_seconds)
        log.info("stream_decoding", kind="finish", until_s=round(session.total_seconds, 3))
        self._detected_wall = time.monotonic()
        results = await self._decode(session.finish)
        for response in self._finalized(results, session.total_seconds) if ended else results:
            yield response

    def _events(self, event: VoiceEvent) -> list[pb.StreamingTranscribeResponse]:
        out = []
        worker_id = self._rt.worker_id
        if self._config.enable_voice_activity_events:
            out.append(event_response(_EVENT_TYPES[event.kind], event.sample, worker_id))
        if event.kind == "end" and self._config.single_utterance:
            out.append(event_response(pb.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE, event.sample, worker_id))
        return out

    def _arrival(self, seconds: float) -> float:
        """When the audio at stream time `seconds` came in (the chunk that held it)."""
        sample = round(seconds * SAMPLE_RATE)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < sample - 30 * SAMPLE_RATE:
            self._arrivals.popleft()
        return next((t for end, t in self._arrivals if end >= sample), time.monotonic())

    def _log_final(self, update: StreamUpdate) -> None:
        """One line per final: where its latency went (bench/stream_latency.py reads it)."""
        info = self._session.final_info
        detected = info.get("detected_at", self._session.total_seconds)
        speech_end = info.get("speech_end", detected)
        log.info(
            "stream_final",
            end_s=round(update.final_words[-1].end, 3),
            words=len(update.final_words),
            speech_end_s=round(speech_end, 3),
            audio_in_at=round(self._arrival(speech_end), 4),
            endpoint_at=round(self._arrival(detected), 4),
            detected_at=round(self._detected_wall, 4),
            sent_at=round(time.monotonic(), 4),
            reused=bool(info.get("reused")),
            **{k: round(v, 4) for k, v in info.items() if k.endswith("_s") or k == "batch"},
        )

    async def _decode(self, step: Callable[[], StreamUpdate]) -> list[pb.StreamingTranscribeResponse]:
        """Run a session step (a decode) and turn its update into responses, its finals labelled by speaker
        when the stream asked for that."""
        update = await self._rt.run_for_stream(step)
        labels = None
        if self._speakers is not None and update.final_words:
            labels = await self._rt.run_for_stream(self._speakers.label, update.final_words)
        return self._results(update, labels)

    def _finalized(
        self, responses: list[pb.StreamingTranscribeResponse], at_s: float
    ) -> list[pb.StreamingTranscribeResponse]:
        """An ended utterance's final results, the last one marked UTTERANCE_FINALIZED when the client asked:
        in the same response, so no resume point can fall between the words and the mark. `at_s`: where the
        end was judged (a position of the audio, so a moved stream marks it at the same offset)."""
        if not (self._config.enable_voice_activity_events and self._config.enable_utterance_finalized_events):
            return responses
        if not responses:
            responses = [pb.StreamingTranscribeResponse(worker_id=self._rt.worker_id)]
        responses[-1].speech_event_type = pb.SPEECH_EVENT_TYPE_UTTERANCE_FINALIZED
        responses[-1].speech_event_offset.CopyFrom(duration(at_s))
        return responses

    def _results(self, update: StreamUpdate, labels: list[str] | None = None) -> list[pb.StreamingTranscribeResponse]:
        session = self._session
        if update.final_words:
            self._log_final(update)
        results = stream_results(
            update, self._config.interim_results, self._with_words, session.language, session.total_seconds, labels
        )
        # A decode's finals (one per speaker when labelled) go out in one response, which carries the
        # resume point after them all: a worker killed between two responses could otherwise leave the
        # gateway a state in which the later finals were made but never sent.
        finals = [r for r in results if r.is_final]
        out = [pb.StreamingTranscribeResponse(results=finals, worker_id=self._rt.worker_id)] if finals else []
        out += [
            pb.StreamingTranscribeResponse(results=[r], worker_id=self._rt.worker_id) for r in results if not r.is_final
        ]
        return out
