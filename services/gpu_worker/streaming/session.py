"""A streaming session: Whisper over the uncommitted tail of a stream, utterances cut by voice activity.

- Silero VAD (`vad.py`) judges every 32 ms window; silence outside speech is never decoded.
- Finals come only from *deciding* decodes, made at audio positions that depend on the audio alone:
  a pause inside speech reaching `pause_decode_s` (PAUSE), an utterance's end (FINALIZE), and every
  `interim_interval_s` of speech while an utterance holds over `commit_after_s` not yet final (COMMIT).
  `detect` stops judging audio exactly where one is due, so however the audio arrives (live chunks, a
  backlog, a replay on another worker after a failover) a stream gives the same finals.
- *Interims* (`prepare_interim`, `interim_update`) are for the client's eyes only: they change nothing
  finals depend on, so a loaded worker skips them, and they run while the stream goes on.
- Two consecutive deciding decodes commit the word prefix they agree on (LocalAgreement-2) when it is
  `commit_lag_s` behind the audio; at an utterance's end its last hypothesis becomes final as a whole
  (the pause decode, made while the end-of-speech timeout elapses, is reused).
- Final audio before the tail is cut to `context_s`, its text going in as prompt: a decode costs
  about the tail's length however long the stream runs. See docs/streams.md.

Times count from the stream's start. The class is synchronous and holds no locks: the worker calls
it from one thread at a time (`add_audio`/`detect` are cheap, `process`/`finish` decode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.scheduler import Priority
from services.gpu_worker.batching.transcriber import Decoder
from services.gpu_worker.engines.base import DecodeOptions, EngineResult, Word
from services.gpu_worker.engines.encoder_length import EncoderLengths
from services.gpu_worker.streaming.agreement import agreed_prefix, ends_sentence
from services.gpu_worker.streaming.audio_buffer import AudioBuffer
from services.gpu_worker.streaming.decoded import RECENT, DecodeContext, InterimRequest, new_words
from services.gpu_worker.streaming.resume import SessionState
from services.gpu_worker.streaming.vad import WINDOW, VadConfig, VoiceEvent, VoiceTrack

#: Kinds of deciding decode (`StreamingSession.pending_decode`).
FINALIZE, PAUSE, COMMIT = "finalize", "pause", "commit"
_KEEP_COMMITTED = 200  # committed words remembered for alignment and prompts: enough for both, bounded


def _samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


@dataclass(frozen=True)
class SessionConfig:
    """How often the session decodes and how much audio it keeps. Times in seconds."""

    interim_interval_s: float = 1.0  # new speech audio between two decodes of an utterance
    first_interim_s: float = 0.5  # speech before the first interim of an utterance
    # Inside an utterance only words this far behind the decoded audio's end may be committed by
    # agreement: Whisper still rewrites recent words once it hears what follows them.
    commit_lag_s: float = 2.0
    pause_decode_s: float = 0.2  # a pause this long inside speech is decoded at once (maybe final)
    # An utterance with this much speech not yet final is decoded every interim_interval_s to commit
    # what agrees (shorter utterances become final when they end).
    commit_after_s: float = 6.0
    # Final audio kept before the tail: Whisper hears a sentence better with some of what came before.
    context_s: float = 3.0
    max_buffer_s: float = 24.0  # never let the buffer outgrow Whisper's 30 s window
    # A finished utterance stays as context for the next one unless the silence after it outlasts this.
    context_gap_s: float = 3.0
    prompt_chars: int = 200
    min_decode_s: float = 0.3
    interims: bool = True  # False: the client asked for no interim results
    # Shortest encoder input of a stream's decode (STREAM_ENCODER_MIN_SECONDS): a decode of L seconds is
    # encoded as L plus the engine's margin of silence, rounded up to a bucket (engines/encoder_length.py).
    encoder_min_s: float = 10.0
    vad: VadConfig = field(default_factory=VadConfig)


@dataclass(frozen=True)
class StreamUpdate:
    """What one decode produced: newly committed words and the current unconfirmed tail."""

    final_words: tuple[Word, ...]
    interim_words: tuple[Word, ...]
    stability: float

    @staticmethod
    def text(words: tuple[Word, ...]) -> str:
        return " ".join(w.word for w in words).strip()


class StreamingSession:
    """Buffer, voice activity, decode and commit for one stream."""

    def __init__(self, engine: Decoder, options: DecodeOptions, config: SessionConfig | None = None) -> None:
        self._engine = engine
        # The session gates speech itself; the engine's VAD would remove the pauses word times rely on.
        self._options = replace(options, word_timestamps=True, vad_filter=False, single_window=True)
        self._base_prompt = options.initial_prompt or ""
        self.config = config or SessionConfig()
        self._voice = VoiceTrack(self.config.vad, SAMPLE_RATE)
        self._detector = self._voice.detector
        self._closing: tuple[int, int] | None = None  # (speech end, detected at) of an utterance to finalize
        self._floor = 0  # audio before this belongs to finished utterances
        self._context_end: int | None = None  # end of the finished utterance kept as context
        self._buffer = AudioBuffer(_samples(self.config.max_buffer_s + 8))
        self._total = 0
        self._decoded_to = 0  # stream sample where the last deciding decode's audio ended
        self._shown_to = 0  # stream sample where the last interim's audio ended
        self._committed: list[Word] = []
        self._in_prompt = 0  # leading committed words already part of _base_prompt (after a restore)
        self._hypothesis: list[Word] = []
        self.committed_count = 0
        self.language: str = options.language or ""
        self.decodes = 0
        self.utterances = 0
        self.longest_decode_s = 0.0  # longest audio decoded at once: stays bounded when trimming works
        self.decode_seconds = 0.0  # time spent in the engine
        # The last decode's timing (`Transcriber.timings`), and what the latest final was made of: for
        # the worker's log line per final, which says where its latency went.
        self.last_timing: dict[str, float] = {}
        self.final_info: dict[str, float] = {}
        self._hypothesis_timing: dict[str, float] = {}

    @property
    def total_seconds(self) -> float:
        return self._total / SAMPLE_RATE

    @property
    def judged_seconds(self) -> float:
        """How far into the stream the audio has been judged (and decoded where due)."""
        return self._voice.pos / SAMPLE_RATE

    @property
    def buffer_seconds(self) -> float:
        return self._buffer.size / SAMPLE_RATE

    @property
    def in_speech(self) -> bool:
        """An utterance is open (begun and not ended)."""
        return self._detector.in_speech

    @property
    def closing(self) -> bool:
        """An utterance has ended and `process` will make it final before more audio is judged."""
        return self._closing is not None

    @property
    def committed_words(self) -> tuple[Word, ...]:
        """The latest committed words (at most a few hundred)."""
        return tuple(self._committed)

    def add_audio(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono audio; `detect` judges it."""
        if samples.size:
            self._buffer.append(samples)
            self._total += samples.size

    def detect(self) -> list[VoiceEvent]:
        """Judge the audio not judged yet, stopping where a deciding decode is due (`process` makes it)."""
        if self.pending_decode() is not None:
            return []
        # After a restore the replayed audio first refills the buffer up to what Silero already scored.
        self._voice.score(self._buffer.view(self._voice.fed))
        events = []
        # Only windows whose audio is here: after a restore, windows scored on the first worker wait for
        # the replay to bring their audio back, or a decode would be made of less audio than there.
        while self._voice.scored and self._voice.scored[0][0] + WINDOW <= self._total:
            event = self._voice.judge_next()
            if event is not None:
                events.append(event)
                if event.kind == "begin":
                    self._begin(event.sample)
                else:
                    self._closing = (event.sample, self._voice.pos)
            if self.pending_decode() is not None:
                break
        if not self._detector.in_speech and self._closing is None and not self._keeps_context():
            # Outside speech only a pre-roll is kept: silence is never decoded.
            self._drop_before(max(self._floor, self._voice.pos - _samples(self.config.vad.pre_roll_s)))
        return events

    def _keeps_context(self) -> bool:
        if self._context_end is not None and self._voice.pos - self._context_end > _samples(self.config.context_gap_s):
            self._context_end = None
        return self._context_end is not None

    def decode_due(self) -> bool:
        """Whether `process` has work: an utterance to finalize, or a deciding decode due."""
        return self.pending_decode() is not None

    def pending_decode(self) -> str | None:
        """The deciding decode due at the judged audio's end: FINALIZE, PAUSE, COMMIT, or None."""
        if self._total < self._voice.pos:
            return None  # restored, and the replay has not brought back the audio up to here yet
        if self._closing is not None:
            return FINALIZE
        detector = self._detector
        if not detector.in_speech:
            return None
        c = self.config
        if self._voice.pos - self._buffer.start > _samples(c.max_buffer_s) and self._voice.pos > self._decoded_to:
            return COMMIT
        pause = detector.silence_start
        if pause is not None:
            due_at = pause + _samples(c.pause_decode_s)
            return PAUSE if self._voice.pos >= due_at > self._decoded_to else None
        since = self._voice.pos - max(self._decoded_to, detector.speech_start)
        return COMMIT if self.needs_commits and since >= _samples(c.interim_interval_s) else None

    @property
    def needs_commits(self) -> bool:
        """The open utterance holds much speech not yet final: only agreement between decodes lets it be cut."""
        committed_to = round(self._committed[-1].end * SAMPLE_RATE) if self._committed else 0
        start = max(committed_to, self._detector.speech_start)
        return self._voice.pos - start >= _samples(self.config.commit_after_s)

    def interim_due(self) -> bool:
        """Whether an interim would show something new: enough speech since the last decode, no pause pending."""
        c, detector = self.config, self._detector
        if not c.interims or self._closing is not None or not detector.in_speech or detector.silence_start is not None:
            return False
        if self._total < self._voice.pos:
            return False
        last = max(self._shown_to, self._decoded_to, detector.speech_start)
        wait = c.first_interim_s if last == detector.speech_start and not self._hypothesis else c.interim_interval_s
        return self._voice.pos - last >= _samples(wait)

    def prepare_interim(self) -> InterimRequest | None:
        """An interim decode of the audio judged so far, to run on any thread while the stream goes on."""
        until = self._voice.pos
        if self._buffer.view(end=until).size < _samples(self.config.min_decode_s):
            return None
        self._shown_to = until
        # Only the utterance's words not yet final, without the context: an interim is for the eyes, and
        # the shorter input costs less where it could delay a final (the text before goes in as prompt).
        begin = max(self._buffer.start, self._floor, self._detector.speech_start - _samples(self.config.vad.pre_roll_s))
        if self._committed and self._committed[-1].end * SAMPLE_RATE > begin:
            begin = min(round(self._committed[-1].end * SAMPLE_RATE), until - _samples(self.config.min_decode_s))
        return InterimRequest(
            self._buffer.view(begin, until).copy(),
            replace(self._options, initial_prompt=self._prompt(begin)),
            begin / SAMPLE_RATE,
            until,
            self._context(),
            self.committed_count,
            self.utterances,
        )

    def decode_interim(self, request: InterimRequest) -> EngineResult:
        """Run an interim's decode (blocking; touches no session state)."""
        encode_s = self._encode_s(request.audio.size)
        return self._engine.transcribe(request.audio, request.options, priority=Priority.INTERIM, encode_s=encode_s)

    def interim_update(self, request: InterimRequest, result: EngineResult) -> StreamUpdate | None:
        """The interim to show for `request`'s decode, or None when finals have overtaken it."""
        if request.committed_count != self.committed_count or request.utterances != self.utterances:
            return None
        if not self._detector.in_speech or self._closing is not None or request.until < self._decoded_to:
            return None
        self.decodes += 1
        words = new_words(result, request.offset, request.context)
        return StreamUpdate((), tuple(words), _stability(self._hypothesis, words))

    def process(self) -> StreamUpdate:
        """Make the deciding decode that is due: finalize an ended utterance, or decode and commit what agrees."""
        if self._closing is not None:
            return self._finalize(*self._closing)
        if self.pending_decode() is None:
            return StreamUpdate((), tuple(self._hypothesis), 0.0)
        hypothesis = self._decode(self._voice.pos)
        n = agreed_prefix(self._hypothesis, hypothesis)
        settled = (self._decoded_to / SAMPLE_RATE) - self.config.commit_lag_s
        while n and hypothesis[n - 1].end > settled:
            n -= 1
        if (self._voice.pos - self._buffer.start) / SAMPLE_RATE > self.config.max_buffer_s:
            # No agreement for most of a Whisper window: commit all but the last words rather than
            # let the buffer outgrow the 30 s the model can see.
            n = max(n, len(hypothesis) - 2)
        final, tail = hypothesis[:n], hypothesis[n:]
        self.final_info = {"reused": 0.0, **self.last_timing}
        self._hypothesis_timing = self.last_timing
        self._commit(final)
        if final:
            self._trim(tail[0].start if tail else None)
        if self._voice.pos - self._buffer.start > _samples(self.config.max_buffer_s):
            self._drop_before(self._voice.pos - SAMPLE_RATE)  # nothing to commit in a whole window: noise
        stability = _stability(self._hypothesis, tail)
        self._hypothesis = tail
        return StreamUpdate(tuple(final), tuple(tail), stability)

    def finish(self) -> StreamUpdate:
        """End of audio: make everything still open final."""
        if self._closing is not None:
            return self._finalize(*self._closing)
        if not self._detector.in_speech and not self._hypothesis:
            return StreamUpdate((), (), 1.0)
        self._detector.in_speech = False
        return self._finalize(self._total, self._total)

    def _begin(self, start: int) -> None:
        pre_roll = max(self._floor, start - _samples(self.config.vad.pre_roll_s))
        if self._keeps_context():
            self._trim(pre_roll / SAMPLE_RATE)
        else:
            self._drop_before(pre_roll)
        self._hypothesis = []

    def _finalize(self, speech_end: int, detected_at: int) -> StreamUpdate:
        """Commit the whole hypothesis of an utterance that ended at `speech_end`."""
        covered = min(speech_end + _samples(self.config.pause_decode_s), detected_at)
        if covered <= self._decoded_to <= detected_at:
            final = self._hypothesis  # decoded during the pause: the same audio, minus some silence
            self.final_info = {"reused": 1.0, **self._hypothesis_timing}
        else:
            final = self._decode(detected_at)
            self.final_info = {"reused": 0.0, **self.last_timing}
        self.final_info.update(speech_end=speech_end / SAMPLE_RATE, detected_at=detected_at / SAMPLE_RATE)
        self._commit(final)
        self._hypothesis = []
        self._closing = None
        self._floor = speech_end
        self._context_end = speech_end
        if not self._keeps_context():
            self._drop_before(max(speech_end, detected_at - _samples(self.config.vad.pre_roll_s)))
        self.utterances += 1
        return StreamUpdate(tuple(final), (), 1.0)

    def snapshot(self) -> tuple[float, bytes]:
        """(stream offset in seconds of the buffered audio, opaque state). Given the stream's audio from
        that offset, `restore` rebuilds this session exactly, on another worker (failover)."""
        start = self._buffer.start
        in_buffer = sum(1 for w in self._committed if w.end * SAMPLE_RATE > start)
        state = SessionState(
            buffer_start=start,
            voice=self._voice.state(),
            closing=self._closing,
            floor=self._floor,
            context_end=self._context_end,
            decoded_to=self._decoded_to,
            shown_to=self._shown_to,
            prompt=self._prompt() or "",
            committed=self._committed[-(in_buffer + RECENT) :],
            hypothesis=list(self._hypothesis),
            committed_count=self.committed_count,
            utterances=self.utterances,
            language=self.language,
        )
        return start / SAMPLE_RATE, state.encode()

    def restore(self, blob: bytes) -> None:
        """Continue from `snapshot`; the audio added next must start at the snapshot's offset."""
        state = SessionState.decode(blob)
        self._total = state.buffer_start
        self._buffer.drop_before(self._buffer.start + self._buffer.size)
        self._buffer.start = self._total
        self._voice.load_state(state.voice)
        self._closing = state.closing
        self._floor, self._context_end = state.floor, state.context_end
        self._decoded_to, self._shown_to = state.decoded_to, state.shown_to
        self._base_prompt = state.prompt
        self._committed = list(state.committed)
        self._in_prompt = sum(1 for w in self._committed if w.end * SAMPLE_RATE <= state.buffer_start)
        self._hypothesis = list(state.hypothesis)
        self.committed_count, self.utterances = state.committed_count, state.utterances
        self.language = state.language

    def _prompt(self, begin: int | None = None) -> str | None:
        # Only text whose audio is not decoded (before `begin`, the buffer's start by default): prompted
        # with words it can still hear, Whisper takes them as already said and skips that speech.
        start = self._buffer.start if begin is None else begin
        gone = " ".join(w.word for w in self._committed[self._in_prompt :] if w.end * SAMPLE_RATE <= start)
        # Cut, then strip: a restored session, whose base prompt is this cut, then cuts the same text.
        prompt = (self._base_prompt + " " + gone).strip()[-self.config.prompt_chars :].lstrip()
        return prompt or None

    def _encode_s(self, samples: int) -> float:
        return EncoderLengths(self.config.encoder_min_s).seconds(samples / SAMPLE_RATE)

    def _context(self) -> DecodeContext:
        return DecodeContext(
            tuple(self._committed[-RECENT:]),
            self._detector.speech_start,
            tuple(self._voice.judged),
            self.config.vad.threshold,
        )

    def _decode(self, until: int) -> list[Word]:
        """A deciding decode of the buffer up to stream sample `until`: the words after those committed."""
        self._decoded_to = until
        if self._buffer.view(end=until).size < _samples(self.config.min_decode_s):
            return []
        words = self._decode_span(self._buffer.start, until)
        own = max(self._floor, self._detector.speech_start - _samples(self.config.vad.pre_roll_s))
        if not words and own - self._buffer.start >= _samples(self.config.min_decode_s) and until - own > 0:
            # The buffer holds a finished utterance as context, and Whisper ended its transcript with that
            # context, leaving out the speech after it (it does, after a pause): the utterance alone, with
            # the context as prompt, is heard. Without this a whole sentence can go missing.
            words = self._decode_span(own, until)
        return words

    def _decode_span(self, begin: int, until: int) -> list[Word]:
        audio = self._buffer.view(begin, until)
        options = replace(self._options, initial_prompt=self._prompt(begin))
        started = time.perf_counter()
        result = self._engine.transcribe(audio, options, priority=Priority.FINAL, encode_s=self._encode_s(audio.size))
        self.decode_seconds += time.perf_counter() - started
        self.last_timing = dict(result.extra)
        self.decodes += 1
        self.longest_decode_s = max(self.longest_decode_s, audio.size / SAMPLE_RATE)
        self.language = result.language
        return new_words(result, max(begin, self._buffer.start) / SAMPLE_RATE, self._context())

    def _commit(self, final: list[Word]) -> None:
        if not final:
            return
        self._committed.extend(final)
        self.committed_count += len(final)
        if len(self._committed) > 2 * _KEEP_COMMITTED:
            dropped = len(self._committed) - _KEEP_COMMITTED
            del self._committed[:dropped]
            self._in_prompt = max(0, self._in_prompt - dropped)

    def _trim(self, tail_start: float | None) -> None:
        """Keep at most `context_s` of final audio before the tail (which starts at `tail_start`, s, or
        after the last committed word), cut between two committed words, after a sentence when one is there."""
        offset = self._buffer.start / SAMPLE_RATE
        words = [w for w in self._committed if w.end > offset]
        if not words:
            return
        if tail_start is None:
            tail_start = words[-1].end
        earliest = tail_start - self.config.context_s
        # Cut points: just before each committed word, between it and the one before.
        cuts = [(i, (max(offset, words[i - 1].end if i else offset) + w.start) / 2) for i, w in enumerate(words)]
        cuts = [(i, t) for i, t in cuts if t >= earliest and words[i].start < tail_start]
        if not cuts:
            self._drop_before(min(_samples(tail_start), self._voice.pos))
            return
        after_sentence = [(i, t) for i, t in cuts if i and ends_sentence(words[i - 1])]
        _, cut = (after_sentence or cuts)[0]
        self._drop_before(_samples(cut))

    def _drop_before(self, sample: int) -> None:
        """Forget the buffered audio before stream position `sample` (never audio not yet judged)."""
        if self._buffer.drop_before(min(sample, self._voice.fed)):
            self._voice.forget_before(self._buffer.start)


def _stability(previous: list[Word], tail: list[Word]) -> float:
    agreeing = agreed_prefix(previous, tail) if previous else 0
    return 0.0 if not tail else min(0.9, 0.1 + 0.8 * agreeing / len(tail))
