"""One long recording on all workers: split at silences, transcribe the pieces in parallel, merge.

Pure functions; the servicer decides when to shard and dispatches the pieces.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Protocol

import av
import numpy as np
from google.protobuf import duration_pb2

from services.common.audio import FRAME, SAMPLE_RATE, frame_energy
from services.gen import transcription_pb2 as pb

MIN_PIECE_S = 30.0  # Whisper reads 30 s windows: shorter pieces waste most of a window


def container_duration(data: bytes | str | os.PathLike[str]) -> float | None:
    """Duration the container (bytes or a file) declares, read from its header without decoding; None if unknown."""
    try:
        opened = io.BytesIO(data) if isinstance(data, bytes) else os.fspath(data)
        with av.open(opened, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except (av.error.FFmpegError, ValueError, IndexError, OSError):
        return None
    return None


class _Worker(Protocol):
    @property
    def serving(self) -> bool: ...
    @property
    def idle(self) -> bool: ...


def idle_workers(workers: Iterable[_Worker]) -> int:
    """Serving workers with no call and no stream: what a sharded `Transcribe` can use.

    Sharding gains only where a piece runs on compute that would otherwise wait: a busy worker already
    keeps its share of the device busy, and a piece sent to it only queues behind its work while the
    cut still costs a little accuracy at each edge. So a recording is cut into one piece per idle
    worker, and sent whole when fewer than two are idle."""
    return sum(1 for w in workers if w.serving and w.idle)


def piece_count(duration_s: float, workers: int) -> int:
    """One piece per (idle) worker, but never pieces shorter than a Whisper window."""
    return max(1, min(workers, int(duration_s // MIN_PIECE_S)))


def split_points(audio: np.ndarray, pieces: int, search_s: float = 8.0) -> list[int]:
    """Sample offsets that cut `audio` into `pieces` parts of about equal length, each cut placed in
    the quietest 20 ms frame within `search_s` of the ideal point, so no word is cut in half."""
    if pieces <= 1:
        return []
    energy = frame_energy(audio)
    reach = int(search_s * SAMPLE_RATE / FRAME)
    cuts = []
    for k in range(1, pieces):
        ideal = int(audio.size * k / pieces) // FRAME
        cut = quietest_point(energy, ideal - reach, ideal + reach)
        if cut is not None:
            cuts.append(cut)
    return sorted(set(cuts))


def quietest_point(energy: np.ndarray, lo: int, hi: int) -> int | None:
    """Sample offset at the middle of the longest quiet stretch in [lo, hi) (frame indices, clamped so
    that neither side of the cut is empty); None when the range is empty.

    A frame is quiet when its energy is near the range's quietest (within a tenth of the way to the
    median). The longest such stretch is a pause between sentences, where a cut changes no word: the
    single quietest 20 ms frame may be the closure of a "t" inside a word, and a piece that starts
    there loses the word (measured: docs/encoder.md, sharding)."""
    lo, hi = max(1, lo), min(len(energy) - 1, hi)
    if hi <= lo:
        return None
    span = energy[lo:hi]
    floor = float(span.min())
    quiet = span <= floor + 0.1 * (float(np.median(span)) - floor)
    best, best_len, run_start = 0, 0, -1
    for i, q in enumerate([*quiet.tolist(), False]):
        if q and run_start < 0:
            run_start = i
        elif not q and run_start >= 0:
            if i - run_start > best_len:
                best, best_len = run_start, i - run_start
            run_start = -1
    return (lo + best + best_len // 2) * FRAME + FRAME // 2


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _shift(d: duration_pb2.Duration, offset_ns: int) -> None:
    d.FromNanoseconds(d.ToNanoseconds() + offset_ns)


def shift_segment(seg: pb.Segment, offset_ns: int) -> None:
    """Move a segment and its words by `offset_ns`: from a piece's time to the recording's."""
    _shift(seg.start_offset, offset_ns)
    _shift(seg.end_offset, offset_ns)
    for word in seg.words:
        _shift(word.start_offset, offset_ns)
        _shift(word.end_offset, offset_ns)


def main_language(segments: Iterable[pb.Segment], fallback: str) -> str:
    """The language most of the speech was decoded in, over pieces decoded apart (each segment says its
    own); `fallback` without segments."""
    seconds: dict[str, float] = {}
    for seg in segments:
        if seg.language_code:
            length = (seg.end_offset.ToNanoseconds() - seg.start_offset.ToNanoseconds()) / 1e9
            seconds[seg.language_code] = seconds.get(seg.language_code, 0.0) + max(0.0, length)
    return max(seconds, key=lambda code: seconds[code]) if seconds else fallback


def merge(parts: list[tuple[float, pb.TranscribeResponse]]) -> pb.TranscribeResponse:
    """Join piece transcripts in order, moving every time by its piece's offset in the recording."""
    merged = pb.TranscribeResponse()
    texts = []
    workers: list[str] = []
    for offset_s, part in sorted(parts, key=lambda p: p[0]):
        offset_ns = round(offset_s * 1e9)
        for segment in part.segments:
            seg = merged.segments.add()
            seg.CopyFrom(segment)
            seg.id = len(merged.segments) - 1
            shift_segment(seg, offset_ns)
        if part.transcript:
            texts.append(part.transcript)
        if part.worker_id not in workers:
            workers.append(part.worker_id)
    first = min(parts, key=lambda p: p[0])[1]
    merged.transcript = " ".join(texts)
    merged.language_code = main_language(merged.segments, first.language_code)
    # the probability the first piece decoded in that language reported
    ordered = [p for _, p in sorted(parts, key=lambda p: p[0])]
    merged.language_probability = next(
        (p for p in ordered if p.language_code == merged.language_code), first
    ).language_probability
    merged.audio_duration.FromNanoseconds(sum(p.audio_duration.ToNanoseconds() for _, p in parts))
    merged.worker_id = ",".join(workers)
    return merged
