"""Cutting a recording into Whisper windows at silences (pure functions).

Whisper reads at most 30 s at a time. A long recording is cut where Silero VAD hears silence, the
silence between utterances is dropped, and neighbouring utterances are merged into windows of at most
`MAX_WINDOW_S` (WhisperX's cut-and-merge), so a batch of windows holds speech and little padding. A
stretch of speech longer than a window, with no pause Silero would call silence, is cut at its
quietest 20 ms frame near the limit, so no word is cut in half. Every window keeps its offset in the
recording, so its segment times map back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from services.common.audio import FRAME, SAMPLE_RATE, frame_energy

#: Longest window: shorter than Whisper's 30 s, so a decoder that runs late still sees every word
#: (faster-whisper PR #936 measured ~25 s chunks better than 30 s).
MAX_WINDOW_S = 25.0
#: Longest silence kept inside a window; a longer pause starts a new window (Whisper invents text in
#: long silences).
MAX_GAP_S = 3.0
#: Padding kept around each stretch of speech, so the first and last syllables are not clipped.
SPEECH_PAD_S = 0.2
#: Speech left after a decode stopped early that is decoded again (Window.rest).
MIN_REST_S = 1.0
#: Silero's state is reset this often (see `speech_spans`).
VAD_BLOCK_S = 10.0


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of the recording, decoded as one Whisper window, and where in it VAD heard speech."""

    start: int
    end: int
    speech: tuple[tuple[int, int], ...] = ()

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE

    def rest(self, after_s: float) -> Window | None:
        """The part of this window after `after_s` seconds, if VAD heard at least `MIN_REST_S` of speech
        there: what a decoder that stopped early left out. None when nothing worth decoding is left."""
        if not 0 < after_s < self.seconds:
            return None  # nothing decoded (decoding again would loop), or all of it
        cut = self.start + round(after_s * SAMPLE_RATE)
        speech = tuple((max(a, cut), b) for a, b in self.speech if b > cut)
        heard = sum(b - a for a, b in speech)
        if heard < MIN_REST_S * SAMPLE_RATE:
            return None
        return Window(cut, self.end, speech)


def speech_spans(audio: np.ndarray, block_s: float = VAD_BLOCK_S) -> list[tuple[int, int]]:
    """Where Silero VAD hears speech, padded, in samples; touching spans joined.

    Silero runs over blocks of `block_s` with a fresh state each: over a whole recording its recurrent
    state drifts, and after minutes of one voice it missed 25 s of a quieter one (19 of them found
    with 10 s blocks). Spans that meet at a block edge are joined, so no cut falls there.
    """
    options = VadOptions(
        threshold=0.5,
        min_speech_duration_ms=100,
        min_silence_duration_ms=300,
        speech_pad_ms=int(SPEECH_PAD_S * 1000),
    )
    block = int(block_s * SAMPLE_RATE)
    found = [
        (offset + int(item["start"]), offset + int(item["end"]))
        for offset in range(0, audio.size, block)
        for item in get_speech_timestamps(audio[offset : offset + block], options)
    ]
    spans: list[tuple[int, int]] = []
    for start, end in found:
        end = min(end, audio.size)
        if spans and start <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def quietest_cut(audio: np.ndarray, lo: int, hi: int) -> int:
    """The middle of the quietest 20 ms frame in samples [lo, hi), or `hi` when there is no whole frame."""
    energy = frame_energy(audio[lo:hi])
    if energy.size < 1:
        return hi
    return lo + int(np.argmin(energy)) * FRAME + FRAME // 2


def _split_long(audio: np.ndarray, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Cut a span longer than `limit` at quiet frames in the last third before each limit."""
    parts = []
    while end - start > limit:
        cut = quietest_cut(audio, start + 2 * limit // 3, start + limit)
        parts.append((start, cut))
        start = cut
    parts.append((start, end))
    return parts


def plan_windows(
    audio: np.ndarray,
    spans: list[tuple[int, int]],
    max_window_s: float = MAX_WINDOW_S,
    max_gap_s: float = MAX_GAP_S,
) -> list[Window]:
    """Merge speech spans (sorted, in samples) into windows of at most `max_window_s`."""
    limit = int(max_window_s * SAMPLE_RATE)
    max_gap = int(max_gap_s * SAMPLE_RATE)
    pieces = [part for start, end in spans if end > start for part in _split_long(audio, start, end, limit)]
    windows: list[Window] = []
    for start, end in pieces:
        last = windows[-1] if windows else None
        if last is not None and end - last.start <= limit and start - last.end <= max_gap:
            windows[-1] = Window(last.start, max(last.end, end), (*last.speech, (start, end)))
        else:
            windows.append(Window(start, end, ((start, end),)))
    return windows


def cut_recording(audio: np.ndarray, max_window_s: float = MAX_WINDOW_S) -> list[Window]:
    """The windows of a recording: speech only, at most `max_window_s` each, in order."""
    if audio.size == 0:
        return []
    return plan_windows(audio, speech_spans(audio), max_window_s)
