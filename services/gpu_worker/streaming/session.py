"""A streaming session: Whisper over a sliding buffer, utterances cut by voice activity, words committed by agreement.

Whisper decodes whole windows, not frames. The session keeps a buffer of recent audio and
re-decodes it (one Whisper window, `DecodeOptions.single_window`) as audio arrives:

- Silero VAD (`vad.py`) judges every 32 ms window. Silence outside speech is never decoded, so a
  silent stream costs no decode and produces no text (Whisper would hallucinate on it).
- Inside an utterance, the longest word prefix on which two consecutive hypotheses agree is
  committed (LocalAgreement-2, Machacek et al., 2023), but only words at least `commit_lag_s`
  behind the audio. Committed words are final: handed out once, never revised.
- When the speaker pauses, the buffer is decoded at once; if the pause lasts the end-of-speech
  timeout, that hypothesis becomes final as a whole. The decode runs while the timeout elapses,
  so an utterance's last words are final about one timeout after it ends instead of waiting for
  a later hypothesis to agree with them.
- A finished utterance stays in the buffer as context for the next one unless a long silence
  follows it. Once the buffer passes `trim_after_s` it is cut just after committed words (at a
  sentence end when there is one), so each decode costs about the same however long the stream
  runs; the committed text cut from the buffer goes back in as prompt.

Times count from the stream's start. The class is synchronous and holds no locks: the worker calls
it from one thread at a time (`add_audio`/`detect` are cheap, `process`/`finish` decode).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.scheduler import Priority
from services.gpu_worker.batching.transcriber import Decoder
from services.gpu_worker.engines.base import DecodeOptions, Word
from services.gpu_worker.streaming.agreement import (
    after_committed,
    agreed_prefix,
    drop_repeated_tail,
    ends_sentence,
    monotonic,
)
from services.gpu_worker.streaming.audio_buffer import AudioBuffer
from services.gpu_worker.streaming.vad import WINDOW, SileroStream, SpeechDetector, VadConfig, VoiceEvent

#: Kinds of decode (`StreamingSession.pending_decode`).
FINALIZE, PAUSE, INTERIM = "finalize", "pause", "interim"
_NO_SPEECH = 0.5  # no-speech probability above which a segment in silence is dropped
_KEEP_COMMITTED = 200  # committed words remembered for alignment and prompts: enough for both, bounded


def _samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


@dataclass(frozen=True)
class SessionConfig:
    """How often the session decodes and how much audio it keeps. Times in seconds."""

    interim_interval_s: float = 1.0  # new speech audio between two decodes of an utterance
    first_interim_s: float = 0.5  # speech between decodes of an utterance that has shown no words yet
    # Inside an utterance only words this far behind the decoded audio's end may be committed by
    # agreement: Whisper still rewrites recent words once it hears what follows them.
    commit_lag_s: float = 2.0
    pause_decode_s: float = 0.2  # a pause this long inside speech is decoded at once (maybe final)
    trim_after_s: float = 12.0  # inside an utterance, cut the buffer after committed words past this
    max_buffer_s: float = 24.0  # never let the buffer outgrow Whisper's 30 s window
    # After an utterance its audio stays in the buffer as context for the next one (Whisper hears a
    # sentence better with the one before it) unless the silence after it outlasts this.
    context_gap_s: float = 3.0
    prompt_chars: int = 200
    min_decode_s: float = 0.3
    interims: bool = True  # False: decode only when a long utterance needs commits, and at pauses
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
        self._vad = SileroStream()
        self._detector = SpeechDetector(self.config.vad, SAMPLE_RATE)
        self._probabilities: deque[tuple[int, float]] = deque()  # scored windows the detector has not seen
        self._judged: deque[tuple[int, float]] = deque()  # scored windows still in the buffer
        self._vad_fed = 0  # samples handed to Silero
        self._vad_pos = 0  # samples the detector has judged: audio up to here is speech or not
        self._closing: tuple[int, int] | None = None  # (speech end, detected at) of an utterance to finalize
        self._floor = 0  # audio before this belongs to finished utterances
        self._context_end: int | None = None  # end of the finished utterance kept as context
        self._buffer = AudioBuffer(_samples(self.config.max_buffer_s + 8))
        self._total = 0
        self._decoded_to = 0  # stream sample where the audio of the current hypothesis ended
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
        """Judge the audio not judged yet, stopping after an utterance end (`process` finalizes it first)."""
        if self._closing is not None:
            return []
        # After a restore the replayed audio first refills the buffer up to what Silero already judged.
        whole = max(0, self._total - self._vad_fed) // WINDOW * WINDOW
        if whole:
            scores = self._vad.feed(self._buffer.view(self._vad_fed, self._vad_fed + whole))
            self._probabilities.extend((self._vad_fed + i * WINDOW, float(p)) for i, p in enumerate(scores))
            self._vad_fed += whole
        events = []
        while self._probabilities:
            start, probability = self._probabilities.popleft()
            self._judged.append((start, probability))
            self._vad_pos = start + WINDOW
            event = self._detector.window(probability, start)
            if event is None:
                continue
            events.append(event)
            if event.kind == "begin":
                self._begin(event.sample)
            else:
                self._closing = (event.sample, self._vad_pos)
                break
        if not self._detector.in_speech and self._closing is None and not self._keeps_context():
            # Outside speech only a pre-roll is kept: silence is never decoded.
            self._drop_before(max(self._floor, self._vad_pos - _samples(self.config.vad.pre_roll_s)))
        return events

    def _keeps_context(self) -> bool:
        if self._context_end is not None and self._vad_pos - self._context_end > _samples(self.config.context_gap_s):
            self._context_end = None
        return self._context_end is not None

    def decode_due(self) -> bool:
        """Whether `process` has work: an utterance to finalize, or a hypothesis to refresh."""
        return self.pending_decode() is not None

    def pending_decode(self) -> str | None:
        """The decode `process` would make now: FINALIZE, PAUSE (may become final), INTERIM, or None.

        Only INTERIM can be skipped without delaying a final, as long as the buffer is short
        (`needs_commits` is false)."""
        if self._closing is not None:
            return FINALIZE
        detector = self._detector
        if not detector.in_speech:
            return None
        c = self.config
        if self.buffer_seconds > c.max_buffer_s:
            return INTERIM
        pause = detector.silence_start
        if pause is not None:
            # A pause has begun: no interim decode now, it would still be running when the pause
            # decode (the one that may become final) is due.
            due_at = pause + _samples(c.pause_decode_s)
            return PAUSE if self._vad_pos >= due_at > self._decoded_to else None
        new = self._vad_pos - max(self._decoded_to, detector.speech_start)
        if not c.interims:
            due = self.needs_commits and new >= _samples(c.interim_interval_s)
        elif self._decoded_to <= detector.speech_start or not self._hypothesis:
            # Until the utterance shows its first words, look again sooner.
            due = new >= _samples(c.first_interim_s)
        else:
            due = new >= _samples(c.interim_interval_s)
        return INTERIM if due else None

    @property
    def needs_commits(self) -> bool:
        """Much of the buffer is uncommitted speech: only agreement between decodes lets it be cut."""
        committed_to = round(self._committed[-1].end * SAMPLE_RATE) if self._committed else 0
        return self._total - max(committed_to, self._buffer.start) >= _samples(self.config.trim_after_s / 2)

    def process(self) -> StreamUpdate:
        """Finalize an ended utterance, or decode the open one and commit what two hypotheses agree on."""
        if self._closing is not None:
            return self._finalize(*self._closing)
        # A pause decode may become final: it goes ahead of interims in the worker's batches.
        priority = Priority.INTERIM if self.pending_decode() == INTERIM else Priority.FINAL
        hypothesis = self._decode(self._vad_pos, priority)
        if hypothesis is None:
            return StreamUpdate((), tuple(self._hypothesis), 0.0)
        n = agreed_prefix(self._hypothesis, hypothesis)
        settled = (self._decoded_to / SAMPLE_RATE) - self.config.commit_lag_s
        while n and hypothesis[n - 1].end > settled:
            n -= 1
        if self.buffer_seconds > self.config.max_buffer_s:
            # No agreement for most of a Whisper window: commit all but the last words rather than
            # let the buffer outgrow the 30 s the model can see.
            n = max(n, len(hypothesis) - 2)
        final, tail = hypothesis[:n], hypothesis[n:]
        self.final_info = {"reused": 0.0, **self.last_timing}
        self._hypothesis_timing = self.last_timing
        self._commit(final)
        self._trim_at_committed(tail)
        if not hypothesis and self.buffer_seconds > self.config.trim_after_s:
            self._drop_before(self._total - SAMPLE_RATE)
        agreeing = agreed_prefix(self._hypothesis, tail) if self._hypothesis else 0
        stability = 0.0 if not tail else min(0.9, 0.1 + 0.8 * agreeing / len(tail))
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
        if not self._keeps_context():
            self._drop_before(max(self._floor, start - _samples(self.config.vad.pre_roll_s)))
        self._hypothesis = []

    def _finalize(self, speech_end: int, detected_at: int) -> StreamUpdate:
        """Commit the whole hypothesis of an utterance that ended at `speech_end`."""
        covered = min(speech_end + _samples(self.config.pause_decode_s), detected_at)
        if self._decoded_to >= covered and self._decoded_to <= detected_at:
            final = self._hypothesis  # decoded during the pause: the same audio, minus some silence
            self.final_info = {"reused": 1.0, **self._hypothesis_timing}
        else:
            final = self._decode(detected_at, Priority.FINAL) or []
            self.final_info = {"reused": 0.0, **self.last_timing}
        self.final_info.update(speech_end=speech_end / SAMPLE_RATE, detected_at=detected_at / SAMPLE_RATE)
        self._commit(final)
        self._hypothesis = []
        self._closing = None
        self._floor = speech_end
        self._context_end = speech_end
        if not self._keeps_context():
            self._drop_before(max(speech_end, detected_at - _samples(self.config.vad.pre_roll_s)))
        self._trim_at_committed([])
        self.utterances += 1
        return StreamUpdate(tuple(final), (), 1.0)

    def snapshot(self) -> tuple[float, bytes]:
        """(stream offset in seconds of the buffered audio, opaque state). Given the stream's audio from
        that offset, `restore` rebuilds this session exactly, on another worker (failover)."""
        state = {
            "v": 2,
            "buffer_start": self._buffer.start,
            "vad": self._vad.state(),
            "detector": [self._detector.in_speech, self._detector.speech_start, self._detector.silence_start],
            "probabilities": list(self._probabilities),
            "judged": list(self._judged),
            "vad_fed": self._vad_fed,
            "vad_pos": self._vad_pos,
            "closing": self._closing,
            "floor": self._floor,
            "context_end": self._context_end,
            "decoded_to": self._decoded_to,
            # The last words feed alignment and repeat checks; the prompt already holds the rest.
            "prompt": self._prompt() or "",
            "committed": [asdict(w) for w in self._committed[-20:]],
            "hypothesis": [asdict(w) for w in self._hypothesis],
            "committed_count": self.committed_count,
            "utterances": self.utterances,
            "language": self.language,
        }
        return self._buffer.start / SAMPLE_RATE, json.dumps(state).encode()

    def restore(self, blob: bytes) -> None:
        """Continue from `snapshot`; the audio added next must start at the snapshot's offset."""
        state = json.loads(blob)
        if state.get("v") != 2:
            raise ValueError("unknown session state version")
        self._total = int(state["buffer_start"])
        self._buffer.drop_before(self._buffer.start + self._buffer.size)
        self._buffer.start = self._total
        self._vad.load_state(state["vad"])
        self._detector.in_speech, self._detector.speech_start, self._detector.silence_start = state["detector"]
        self._probabilities = deque((int(a), float(p)) for a, p in state["probabilities"])
        self._judged = deque((int(a), float(p)) for a, p in state["judged"])
        self._vad_fed, self._vad_pos = int(state["vad_fed"]), int(state["vad_pos"])
        self._closing = tuple(state["closing"]) if state["closing"] else None
        self._floor, self._context_end = int(state["floor"]), state["context_end"]
        self._decoded_to = int(state["decoded_to"])
        self._base_prompt = state["prompt"]
        self._committed = [Word(**w) for w in state["committed"]]
        self._in_prompt = sum(1 for w in self._committed if w.end <= self._buffer.start / SAMPLE_RATE)
        self._hypothesis = [Word(**w) for w in state["hypothesis"]]
        self.committed_count, self.utterances = int(state["committed_count"]), int(state["utterances"])
        self.language = state["language"]

    def _prompt(self, begin: int | None = None) -> str | None:
        # Only text whose audio is not decoded (before `begin`, the buffer's start by default): prompted
        # with words it can still hear, Whisper takes them as already said and skips that speech.
        start = (self._buffer.start if begin is None else begin) / SAMPLE_RATE
        gone = " ".join(w.word for w in self._committed[self._in_prompt :] if w.end <= start)
        prompt = (self._base_prompt + " " + gone).strip()[-self.config.prompt_chars :]
        return prompt or None

    def _decode(self, until: int, priority: Priority) -> list[Word] | None:
        """Decode the buffer up to stream sample `until`; the words after those already committed."""
        if self._buffer.view(end=until).size < _samples(self.config.min_decode_s):
            return None
        self._decoded_to = until
        words = self._decode_span(self._buffer.start, until, priority)
        own = max(self._floor, self._detector.speech_start - _samples(self.config.vad.pre_roll_s))
        if not words and own - self._buffer.start >= _samples(self.config.min_decode_s) and until - own > 0:
            # The buffer holds a finished utterance as context, and Whisper ended its transcript with that
            # context, leaving out the speech after it (it does, after a pause): the utterance alone, with
            # the context as prompt, is heard. Without this a whole sentence can go missing.
            words = self._decode_span(own, until, priority)
        return words

    def _decode_span(self, begin: int, until: int, priority: Priority) -> list[Word]:
        audio = self._buffer.view(begin, until)
        options = replace(self._options, initial_prompt=self._prompt(begin))
        started = time.perf_counter()
        result = self._engine.transcribe(audio, options, priority=priority)
        self.decode_seconds += time.perf_counter() - started
        self.last_timing = dict(result.extra)
        self.decodes += 1
        self.longest_decode_s = max(self.longest_decode_s, audio.size / SAMPLE_RATE)
        self.language = result.language
        offset = max(begin, self._buffer.start) / SAMPLE_RATE
        committed_end = self._committed[-1].end if self._committed else 0.0
        words = [
            Word(w.start + offset, w.end + offset, w.word, w.probability)
            for s in result.segments
            # Whisper fills a pause at the end of the buffer with text it has seen (often the
            # prompt again); a segment the model doubts that lies where the VAD heard no speech is that.
            if not (s.no_speech_prob > _NO_SPEECH and self._silent(s.start + offset, s.end + offset))
            for w in s.words
            if w.word
        ]
        in_buffer = [w for w in self._committed[-20:] if w.end > offset]
        if in_buffer:
            words = after_committed(in_buffer, words, committed_end)
            if committed_end > self._detector.speech_start / SAMPLE_RATE:
                # Only inside one utterance: across a pause, a repeated word was said twice.
                words = drop_repeated_tail(self._committed, words)
        return monotonic(words, committed_end)

    def _commit(self, final: list[Word]) -> None:
        if not final:
            return
        self._committed.extend(final)
        self.committed_count += len(final)
        if len(self._committed) > 2 * _KEEP_COMMITTED:
            dropped = len(self._committed) - _KEEP_COMMITTED
            del self._committed[:dropped]
            self._in_prompt = max(0, self._in_prompt - dropped)

    def _trim_at_committed(self, tail: list[Word]) -> None:
        """Cut a long buffer after committed words, at a sentence end when one is in the buffer."""
        if self.buffer_seconds < self.config.trim_after_s:
            return
        offset = self._buffer.start / SAMPLE_RATE
        in_buffer = [w for w in self._committed if w.end > offset]
        if not in_buffer:
            return
        cut = len(in_buffer) - 1
        for i in range(len(in_buffer) - 1, -1, -1):
            if ends_sentence(in_buffer[i]):
                cut = i
                break
        following = in_buffer[cut + 1] if cut + 1 < len(in_buffer) else (tail[0] if tail else None)
        end = in_buffer[cut].end
        # Between the last kept word and the next one, so neither is clipped.
        cut_time = end if following is None else (end + max(end, following.start)) / 2
        self._drop_before(_samples(cut_time))

    def _drop_before(self, sample: int) -> None:
        """Forget the buffered audio before stream position `sample` (never audio not yet judged)."""
        if self._buffer.drop_before(min(sample, self._vad_fed)):
            while self._judged and self._judged[0][0] + WINDOW <= self._buffer.start:
                self._judged.popleft()

    def _silent(self, start: float, end: float) -> bool:
        """Whether the VAD judged every window of the stream span [start, end] (seconds) silent."""
        first, last = _samples(start) - WINDOW, _samples(end)
        inside = [p for at, p in self._judged if first < at < last]
        return bool(inside) and max(inside) < self.config.vad.threshold
