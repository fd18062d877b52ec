"""A streaming session: Whisper over a sliding buffer, committing words by local agreement.

Whisper decodes whole windows, not frames. The session keeps the audio that is not yet committed,
re-decodes it as audio arrives, and commits the longest word prefix on which two consecutive
hypotheses agree (the LocalAgreement-2 policy of Machacek et al., 2023). Committed words are final:
they are handed out once and never revised. The buffer is cut just after committed words once it is
long enough, so each decode costs about the same however long the stream runs, and the committed
text cut from the buffer goes back in as prompt so the model keeps its context across cuts.

The class is synchronous and holds no locks: the worker calls it from one executor thread at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from difflib import SequenceMatcher

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.engine import DecodeOptions, Engine, Word

_NORMALISE = re.compile(r"[^\w']+")


def normalise(word: str) -> str:
    return _NORMALISE.sub("", word.lower())


def agreed_prefix(previous: list[Word], current: list[Word]) -> int:
    """Length of the longest prefix on which two hypotheses spell the same words."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if normalise(a.word) != normalise(b.word):
            break
        n += 1
    return n


def drop_repeated_tail(committed: list[Word], hypothesis: list[Word], max_ngram: int = 5) -> list[Word]:
    """Drop words at the start of `hypothesis` that repeat the last committed words (decoded twice)."""
    if not committed or not hypothesis:
        return hypothesis
    for n in range(min(max_ngram, len(committed), len(hypothesis)), 0, -1):
        tail = [normalise(w.word) for w in committed[-n:]]
        head = [normalise(w.word) for w in hypothesis[:n]]
        if tail == head and hypothesis[0].start < committed[-1].end + 1.0:
            return hypothesis[n:]
    return hypothesis


def after_committed(committed: list[Word], hypothesis: list[Word], committed_end: float) -> list[Word]:
    """The words of `hypothesis` that come after what is already committed.

    The buffer can still hold committed audio, so a hypothesis repeats committed words before the new
    ones. Whisper's word times drift (a word's end is often stretched over the next one), so the
    repeat is found by spelling: the hypothesis is aligned to the committed words and cut after the
    last committed word. Only when the spelling does not align are times used.
    """
    if not committed:
        return hypothesis
    a = [normalise(w.word) for w in committed]
    b = [normalise(w.word) for w in hypothesis]
    blocks = [m for m in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks() if m.size]
    if blocks and blocks[-1].a + blocks[-1].size == len(a) and (blocks[-1].size >= 2 or len(a) == 1):
        return hypothesis[blocks[-1].b + blocks[-1].size :]
    return [w for w in hypothesis if (w.start + w.end) / 2 > committed_end - 0.05]


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
    """Buffer, decode and commit for one stream. Times in results count from the stream's start."""

    def __init__(
        self,
        engine: Engine,
        options: DecodeOptions,
        trim_after_s: float = 12.0,
        max_buffer_s: float = 24.0,
        prompt_chars: int = 200,
        min_decode_s: float = 0.3,
    ) -> None:
        self._engine = engine
        # Greedy-or-beam at temperature 0 only: sampling fallbacks would make a stream replayed on another
        # worker (failover) decode differently, and cost latency a live stream cannot spare.
        self._options = replace(options, word_timestamps=True, temperatures=(0.0,))
        self._base_prompt = options.initial_prompt or ""
        self._trim_after = trim_after_s
        self._max_buffer = max_buffer_s
        self._prompt_chars = prompt_chars
        self._min_decode = int(min_decode_s * SAMPLE_RATE)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # samples from the stream start to buffer[0]
        self._total = 0
        self._decoded_at = 0  # stream position (samples) of the last decode
        self._committed: list[Word] = []
        self._in_prompt = 0  # leading committed words already part of _base_prompt (after a restore)
        self._hypothesis: list[Word] = []
        self.language: str = options.language or ""
        self.decodes = 0

    @property
    def total_seconds(self) -> float:
        return self._total / SAMPLE_RATE

    @property
    def unprocessed_seconds(self) -> float:
        """Audio since the last decode. Decodes are scheduled by audio position, never by wall clock,
        so a stream replayed on another worker is decoded at exactly the same points."""
        return (self._total - self._decoded_at) / SAMPLE_RATE

    @property
    def buffer_seconds(self) -> float:
        return self._buffer.size / SAMPLE_RATE

    @property
    def committed_words(self) -> tuple[Word, ...]:
        return tuple(self._committed)

    def add_audio(self, samples: np.ndarray) -> None:
        if samples.size:
            self._buffer = np.concatenate([self._buffer, samples])
            self._total += samples.size

    def process(self) -> StreamUpdate:
        """Decode the buffer and commit what two consecutive hypotheses agree on."""
        hypothesis = self._decode()
        if hypothesis is None:
            return StreamUpdate((), tuple(self._hypothesis), 0.0)
        n = agreed_prefix(self._hypothesis, hypothesis)
        if self.buffer_seconds > self._max_buffer:
            # No agreement for most of a Whisper window: commit all but the last words rather than
            # let the buffer outgrow the 30 s the model can see.
            n = max(n, len(hypothesis) - 2)
        final = hypothesis[:n]
        tail = hypothesis[n:]
        self._commit(final, tail)
        if not hypothesis and self.buffer_seconds > self._trim_after:
            self._drop_before(self._buffer_start + self._buffer.size - SAMPLE_RATE)
        agreeing = agreed_prefix(self._hypothesis, tail) if self._hypothesis else 0
        stability = 0.0 if not tail else min(0.9, 0.1 + 0.8 * agreeing / len(tail))
        self._hypothesis = tail
        return StreamUpdate(tuple(final), tuple(tail), stability)

    def finish(self) -> StreamUpdate:
        """End of audio: decode what is left and commit all of it."""
        hypothesis = self._decode()
        final = self._hypothesis if hypothesis is None else hypothesis
        self._commit(final, [])
        self._hypothesis = []
        return StreamUpdate(tuple(final), (), 1.0)

    def snapshot(self) -> tuple[float, bytes]:
        """(stream offset in seconds of the buffered audio, opaque state): with the audio from that
        offset on, `restore` rebuilds this session exactly on another worker."""
        state = {
            "v": 1,
            "buffer_start": self._buffer_start,
            "decoded_at": self._decoded_at,
            "prompt": self._prompt() or "",
            # The last words feed alignment and repeat checks; the prompt already holds the rest.
            "committed": [asdict(w) for w in self._committed[-20:]],
            "hypothesis": [asdict(w) for w in self._hypothesis],
            "language": self.language,
        }
        return self._buffer_start / SAMPLE_RATE, json.dumps(state).encode()

    def restore(self, blob: bytes) -> None:
        """Continue from a snapshot; the next audio added must start at the snapshot's offset."""
        state = json.loads(blob)
        if state.get("v") != 1:
            raise ValueError("unknown session state version")
        self._buffer_start = self._total = int(state["buffer_start"])
        self._decoded_at = int(state["decoded_at"])
        # The prompt already holds the committed text that left the buffer; words still in the buffer
        # are kept for alignment and join the prompt when they leave it.
        self._base_prompt = state["prompt"]
        self._committed = [Word(**w) for w in state["committed"]]
        start = self._buffer_start / SAMPLE_RATE
        self._in_prompt = sum(1 for w in self._committed if w.end <= start)
        self._hypothesis = [Word(**w) for w in state["hypothesis"]]
        self.language = state["language"]

    def _prompt(self) -> str | None:
        # Only text whose audio has left the buffer: prompted with words it can still hear, Whisper
        # takes them as already said and skips that speech.
        start = self._buffer_start / SAMPLE_RATE
        gone = " ".join(w.word for w in self._committed[self._in_prompt :] if w.end <= start)
        prompt = (self._base_prompt + " " + gone).strip()[-self._prompt_chars :]
        return prompt or None

    def _decode(self) -> list[Word] | None:
        self._decoded_at = self._total
        if self._buffer.size < self._min_decode:
            return None
        options = replace(self._options, initial_prompt=self._prompt())
        result = self._engine.transcribe(self._buffer, options)
        self.decodes += 1
        self.language = result.language
        offset = self._buffer_start / SAMPLE_RATE
        committed_end = self._committed[-1].end if self._committed else 0.0
        words = [
            Word(w.start + offset, w.end + offset, w.word, w.probability)
            for s in result.segments
            for w in s.words
            if w.word
        ]
        in_buffer = [w for w in self._committed[-20:] if w.end > offset]
        words = after_committed(in_buffer, words, committed_end) if in_buffer else words
        words = drop_repeated_tail(self._committed, words)
        # Word times must never go backwards across results, even when the aligner jitters.
        floor = committed_end
        monotonic = []
        for w in words:
            start = max(w.start, floor)
            end = max(w.end, start)
            monotonic.append(Word(start, end, w.word, w.probability))
            floor = end
        return monotonic

    def _commit(self, final: list[Word], tail: list[Word]) -> None:
        if not final:
            return
        self._committed.extend(final)
        if self.buffer_seconds < self._trim_after:
            return
        # Cut between the last committed word and the next one, so neither is clipped.
        cut_time = final[-1].end if not tail else (final[-1].end + tail[0].start) / 2
        self._drop_before(round(cut_time * SAMPLE_RATE))

    def _drop_before(self, sample: int) -> None:
        """Forget the buffered audio before stream position `sample`."""
        cut = max(0, min(sample - self._buffer_start, self._buffer.size))
        self._buffer = self._buffer[cut:].copy()
        self._buffer_start += cut
