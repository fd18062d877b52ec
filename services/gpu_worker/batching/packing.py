"""Several short windows of different calls in one Whisper window (pure functions).

On a CPU the encoder costs the same for 4 s of audio as for 30 s: Whisper always reads a 30 s window,
padded with silence. Short recordings (one sentence, one voice note) are the common case of many
clients, so the scheduler packs the short windows of a batch, with a second of silence between them,
into windows of at most `chunking.MAX_WINDOW_S`, decodes the packed window once, and gives each call
back only its own words: words are assigned by where they lie, a segment that spans two calls' audio is
split at the words, and times are moved back to each call's own audio. A packed window's decoder that
stopped early, or a decode that looks wrong, sends the calls it did not cover back to be decoded alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.chunking import MAX_WINDOW_S
from services.gpu_worker.engines.base import Segment, WindowJob, WindowResult, Word

#: Silence between packed windows: Whisper ends a segment at a pause this long.
GAP_S = 1.0
#: Longest window that is packed with others.
MAX_MEMBER_S = 12.0


@dataclass(frozen=True)
class Pack:
    """Windows decoded as one: `offsets[i]` is where member i starts in `job.audio`, in seconds."""

    job: WindowJob
    offsets: tuple[float, ...]
    durations: tuple[float, ...]


def packable(job: WindowJob) -> bool:
    return not job.options.single_window and job.audio.size <= MAX_MEMBER_S * SAMPLE_RATE


def plan(jobs: Sequence[WindowJob], allowed: Sequence[bool], limit_s: float = MAX_WINDOW_S) -> list[list[int]]:
    """Groups of job indices, in order: a packable, allowed job joins the open group when its options
    are the same and it fits; every other job is a group of its own."""
    groups: list[list[int]] = []
    open_group: list[int] = []
    used = 0.0
    for i, job in enumerate(jobs):
        seconds = job.audio.size / SAMPLE_RATE
        if not packable(job) or not allowed[i]:
            groups.append([i])
            continue
        fits = open_group and jobs[open_group[0]].options == job.options and used + GAP_S + seconds <= limit_s
        if fits:
            open_group.append(i)
            used += GAP_S + seconds
        else:
            open_group = [i]
            used = seconds
            groups.append(open_group)
    return groups


def pack(jobs: Sequence[WindowJob]) -> Pack:
    """One window of the jobs' audio with silence between; word times are always on, to split it back."""
    gap = np.zeros(round(GAP_S * SAMPLE_RATE), dtype=np.float32)
    offsets, durations, parts = [], [], []
    at = 0
    for i, job in enumerate(jobs):
        if i:
            parts.append(gap)
            at += gap.size
        offsets.append(at / SAMPLE_RATE)
        durations.append(job.audio.size / SAMPLE_RATE)
        parts.append(job.audio)
        at += job.audio.size
    options = replace(jobs[0].options, word_timestamps=True)
    return Pack(WindowJob(np.concatenate(parts), options, jobs[0].temperature), tuple(offsets), tuple(durations))


def _owner(t: float, offsets: tuple[float, ...]) -> int:
    """The member whose audio (and the half gap on either side) holds time t."""
    return max(0, sum(1 for o in offsets[1:] if t >= o - GAP_S / 2))


def _moved(words: list[Word], offset: float, duration: float) -> tuple[Word, ...]:
    def at(t: float) -> float:
        return min(max(t - offset, 0.0), duration)

    return tuple(Word(at(w.start), at(w.end), w.word, w.probability) for w in words)


def unpack(result: WindowResult, p: Pack, wants_words: Sequence[bool]) -> list[WindowResult | None]:
    """Each member's own result, or None where it must be decoded again alone."""
    n = len(p.offsets)
    if result.needs_fallback:
        return [None] * n
    pieces: list[list[Segment]] = [[] for _ in range(n)]
    for segment in result.segments:
        by_member: dict[int, list[Word]] = {}
        for word in segment.words:
            by_member.setdefault(_owner((word.start + word.end) / 2, p.offsets), []).append(word)
        if not segment.words:
            by_member = {_owner((segment.start + segment.end) / 2, p.offsets): []}
        whole = len(by_member) == 1
        for member, words in by_member.items():
            offset, duration = p.offsets[member], p.durations[member]
            moved = _moved(words, offset, duration)
            start = moved[0].start if moved and not whole else min(max(segment.start - offset, 0.0), duration)
            end = moved[-1].end if moved and not whole else min(max(segment.end - offset, 0.0), duration)
            text = segment.text if whole else " ".join(w.word for w in words)
            pieces[member].append(
                replace(segment, start=start, end=end, text=text, words=moved if wants_words[member] else ())
            )
    out: list[WindowResult | None] = []
    for member in range(n):
        if p.offsets[member] + p.durations[member] > result.covered_s + 0.5:
            out.append(None)  # the decoder stopped before this member's audio ended
            continue
        segments = tuple(replace(s, id=i) for i, s in enumerate(pieces[member]))
        out.append(replace(result, segments=segments, covered_s=float("inf")))
    return out
