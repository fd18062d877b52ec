"""What the soak holds every call and the gateway process to: pure checks and the gateway's RSS and fd samples."""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import dataclass, field

import jiwer

from bench.soak_load import StreamRun, UnaryRun

#: A final's start may sit this far before the previous final's end (offsets are rounded to 10 ms frames).
OVERLAP_S = 0.02
#: A stream's finals come only from decodes at positions fixed by its audio (the session's deciding decodes),
#: whatever the load and however often it moves: they must equal the undisturbed run's word for word.
WER_POINTS = 0.0
#: "Flat": the gateway's RSS over the last third of the run is within this of the first third (the allocator
#: settles in the first minutes), and its fds at the end within FD_SLACK of the start, with the same workers.
RSS_GROWTH = 0.10
RSS_FLOOR_BYTES = 16 * 2**20
FD_SLACK = 4


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?;:'\"").lower() for w in text.split() if w.strip(".,!?;:'\"")]


def stream_words(run: StreamRun) -> list[str]:
    return words_of(" ".join(text for _, _, text in run.finals))


@dataclass(frozen=True)
class Difference:
    wer_points: float
    lost: int  # reference words deleted or replaced


def difference(reference: list[str], got: list[str]) -> Difference:
    if reference == got:
        return Difference(0.0, 0)
    if not reference:
        return Difference(100.0 * len(got), 0)
    out = jiwer.process_words(" ".join(reference), " ".join(got) or "<empty>")
    return Difference(100.0 * out.wer, out.deletions + out.substitutions)


def stream_problems(run: StreamRun, reference: StreamRun) -> list[str]:
    """Everything wrong with one stream, held against an undisturbed run of the same clip."""
    where = f"stream {run.request_id} (clip {run.clip}) on {'>'.join(run.workers) or 'no worker'}"
    if run.error is not None:
        return [f"{where} failed: {run.error}"]
    problems = []
    for (_, before_end, _), (start, _, text) in zip(run.finals, run.finals[1:], strict=False):
        if start < before_end - OVERLAP_S:
            problems.append(
                f"{where}: final {text!r} at {start:.2f} s revises audio finalized up to {before_end:.2f} s"
            )
    starts = [start for start, _, _ in run.words]
    if starts != sorted(starts) or any(end < start for start, end, _ in run.words):
        problems.append(f"{where}: word times go back: {run.words}")
    diff = difference(stream_words(reference), stream_words(run))
    if diff.wer_points > WER_POINTS:
        problems.append(
            f"{where}: not the undisturbed run's words ({diff.wer_points:.1f} WER points, {diff.lost} lost): "
            f"{' '.join(stream_words(run))!r} vs {' '.join(stream_words(reference))!r}"
        )
    return problems


def unary_problems(run: UnaryRun) -> list[str]:
    if run.error is not None:
        return [f"{run.request_id} failed after {run.seconds:.1f} s: {run.error}"]
    return []


@dataclass(frozen=True)
class Sample:
    rss: int
    fds: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Sample(rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Sampler:
    """The gateway's RSS and open fds every `interval_s`, from /proc."""

    pid: int
    interval_s: float = 2.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> None:
        self.samples.append(sample(self.pid))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(sample(self.pid))


def rss_problem(samples: list[Sample]) -> str | None:
    third = max(1, len(samples) // 3)
    first = statistics.median(s.rss for s in samples[:third])
    last = statistics.median(s.rss for s in samples[-third:])
    allowed = max(first * RSS_GROWTH, RSS_FLOOR_BYTES)
    if last - first > allowed:
        return (
            f"gateway RSS grew from {first / 2**20:.0f} MiB to {last / 2**20:.0f} MiB (allowed +{allowed / 2**20:.0f})"
        )
    return None


def fd_problem(start: Sample, end: Sample) -> str | None:
    if end.fds > start.fds + FD_SLACK:
        return f"gateway open fds went from {start.fds} to {end.fds} with the same workers up"
    return None
