"""Client-side benchmarks: batch mode of `scribe transcribe` and progress on one long recording.

    make bench-clients        (or: .venv/bin/python -m bench.clients [--audio DIR] [--jobs 1 2])

Starts its own fleet (2 workers, embedded model) in a temporary folder, so it never touches `make run`.
Reads the real recordings in ../shared/audio (manifest.tsv). Writes a Markdown table to stdout and to
bench/results/clients.md.

- Batch: the CLI over the whole folder with --jobs N: wall-clock time (process start to exit), audio
  time, aggregate real-time factor (wall / audio) and failures.
- Progress: the longest recordings joined into one file, sent with Transcribe and with
  TranscribeWithProgress: total time, and for the progress call the time to its first report and to
  its first segment (what the user waits before seeing anything).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scribe_client import ScribeClient

from bench.fleet import BIN, ROOT, fleet, wav_bytes
from services.common.audio import SAMPLE_RATE, decode_container

DEFAULT_AUDIO = ROOT.parent / "shared" / "audio"
SCRIBE_TRANSCRIBE = (str(BIN / "scribe"), "transcribe")


def manifest(audio: Path) -> dict[str, float]:
    rows = (line.split("\t") for line in (audio / "manifest.tsv").read_text().splitlines()[1:] if line.strip())
    return {row[0]: float(row[1]) for row in rows}


@dataclass
class BatchRow:
    jobs: int
    files: int
    audio_s: float
    wall_s: float
    failed: int

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s


def batch(address: str, audio: Path, jobs: int, durations: dict[str, float]) -> BatchRow:
    with tempfile.TemporaryDirectory(prefix="scribe-bench-out-") as out:
        started = time.perf_counter()
        done = subprocess.run(
            [
                *SCRIBE_TRANSCRIBE,
                str(audio),
                "--jobs",
                str(jobs),
                "--format",
                "json",
                "--output",
                out,
                "--address",
                address,
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
    failed = sum(1 for line in done.stderr.splitlines() if "FAILED" in line)
    return BatchRow(jobs, len(durations), sum(durations.values()), wall, failed)


@dataclass
class ProgressRow:
    rpc: str
    audio_s: float
    total_s: float
    first_report_s: float | None = None
    first_segment_s: float | None = None
    reports: int = 1


def joined_recording(audio: Path, durations: dict[str, float], count: int) -> tuple[bytes, float]:
    """The `count` longest recordings one after the other, as a 16 kHz 16-bit WAV."""
    longest = sorted(durations, key=durations.__getitem__)[-count:]
    samples = np.concatenate([decode_container((audio / name).read_bytes(), 3600) for name in longest])
    return wav_bytes(samples), samples.size / SAMPLE_RATE


def progress(address: str, data: bytes, audio_s: float) -> list[ProgressRow]:
    with ScribeClient(address, timeout=1800) as client:
        client.transcribe(data[: len(data) // 20] or data)  # warm both paths' first call
        started = time.perf_counter()
        client.transcribe(data)
        unary = ProgressRow("Transcribe", audio_s, time.perf_counter() - started)
        row = ProgressRow("TranscribeWithProgress", audio_s, 0.0, reports=0)
        started = time.perf_counter()
        for report in client.transcribe_with_progress(data):
            now = time.perf_counter() - started
            row.reports += 1
            if row.first_report_s is None:
                row.first_report_s = now
            if report.segments and row.first_segment_s is None:
                row.first_segment_s = now
        row.total_s = time.perf_counter() - started
    return [unary, row]


def table(batches: list[BatchRow], rows: list[ProgressRow]) -> str:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "### Batch: `scribe transcribe DIR --jobs N --format json`",
        "",
        "| jobs | files | audio (s) | wall (s) | aggregate RTF | x real time | failed |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b.jobs} | {b.files} | {b.audio_s:.1f} | {b.wall_s:.1f} | {b.rtf:.3f} | {1 / b.rtf:.1f} | {b.failed} |"
        for b in batches
    ]
    lines += [
        "",
        "### One long recording: Transcribe vs TranscribeWithProgress",
        "",
        "| RPC | audio (s) | total (s) | first report (s) | first segment (s) | reports |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.rpc} | {r.audio_s:.1f} | {r.total_s:.2f} | {s(r.first_report_s)} | {s(r.first_segment_s)} | {r.reports} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="folder with manifest.tsv")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--join", type=int, default=3, help="how many of the longest recordings to join")
    args = parser.parse_args()
    if not (args.audio / "manifest.tsv").is_file():
        sys.exit(f"{args.audio}/manifest.tsv not found: pass --audio DIR")
    durations = manifest(args.audio)
    data, audio_s = joined_recording(args.audio, durations, args.join)
    with fleet() as started:
        address = started.address
        batches = [batch(address, args.audio, jobs, durations) for jobs in args.jobs]
        rows = progress(address, data, audio_s)
    text = table(batches, rows)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "clients.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
