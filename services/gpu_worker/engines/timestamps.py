"""Whisper's timestamp tokens to segments (a pure function any Whisper engine can use).

A window decoded with timestamps reads `<|t0|> text <|t1|><|t1|> text <|t2|>`. faster-whisper's own
splitter drops text after the last timestamp pair when the window ends mid-sentence, because its
sequential loop decodes that audio again in the next window; a batched window has no next window, so
that text is kept here as a segment that runs to the window's end.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenSegment:
    start: float
    end: float
    tokens: tuple[int, ...]


def split_by_timestamps(
    tokens: list[int], timestamp_begin: int, eot: int, time_precision: float, duration: float
) -> list[TokenSegment]:
    """Segments of one window's tokens, times in seconds from the window's start, clipped to `duration`."""
    segments: list[TokenSegment] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            at = min((token - timestamp_begin) * time_precision, duration)
            if text:
                segments.append(TokenSegment(start if start is not None else 0.0, max(at, start or 0.0), tuple(text)))
                text = []
                start = None
            else:
                start = at
        elif token < eot:
            text.append(token)
    if text:
        begin = start if start is not None else (segments[-1].end if segments else 0.0)
        segments.append(TokenSegment(begin, duration, tuple(text)))
    return segments
