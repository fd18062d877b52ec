"""Streaming benchmark: latency and capacity with K concurrent real-time streams, accuracy against
Transcribe, and a one-hour synthetic stream. Writes bench/results/streaming.md and prints it.

    make bench-stream                       # full run (about 25 min on 2 cores)
    .venv/bin/python -m bench.streaming --quick

It starts its own fleet (supervisord, gateway, workers on the embedded model) in a temporary folder,
like the tests, and reads the recorded speech in ../shared/audio (manifest.tsv: file, duration_s,
reference_text).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench import stream_hour
from bench.fleet import ROOT
from bench.fleet import fleet as started_fleet
from bench.stream_latency import Breakdown, breakdown, breakdown_table, final_lines
from bench.stream_metrics import (
    final_latencies,
    first_interim_latencies,
    markdown_table,
    percentile,
    revisions,
    utterances,
    wer,
)
from bench.stream_play import concurrently, play
from bench.stream_targets import KEEPS_UP_LAG_S, Baseline, LoadRow, check_cell, regression, targets_section
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb

SPEECH_END_S = 0.5  # the server default (STREAM_SPEECH_END_TIMEOUT_S), used to find utterance ends


@dataclass
class Clip:
    file: str
    reference: str
    data: bytes
    audio: np.ndarray

    @property
    def group(self) -> str:
        return self.file.split("/")[0] if "/" in self.file else Path(self.file).stem

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


def load_clips(audio_dir: Path) -> list[Clip]:
    clips = []
    with (audio_dir / "manifest.tsv").open() as manifest:
        for row in csv.DictReader(manifest, delimiter="\t"):
            data = (audio_dir / row["file"]).read_bytes()
            clips.append(Clip(row["file"], row["reference_text"], data, decode_container(data, 3600)))
    return clips


@dataclass
class BenchFleet:
    address: str
    run_dir: Path
    channel: grpc.Channel

    @property
    def stub(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)

    def worker_rss_mib(self) -> dict[str, float]:
        listed = fleet_pb2_grpc.FleetServiceStub(self.channel).ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5)
        return {w.name: w.health.process_rss_bytes / 2**20 for w in listed.workers}

    def request_lines(self) -> dict[str, dict[str, object]]:
        """The workers' canonical request lines, by request id."""
        lines: dict[str, dict[str, object]] = {}
        for log in (self.run_dir / "logs").glob("gpu_worker_*.log"):
            for raw in log.read_text().splitlines():
                if '"request"' in raw:
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    lines[str(line.get("request_id"))] = line
        return lines


@contextmanager
def fleet(workers: int, threads: int, checkout: Path = ROOT) -> Iterator[BenchFleet]:
    with started_fleet(workers, threads, checkout) as started:
        channel = grpc.insecure_channel(started.address)
        try:
            yield BenchFleet(started.address, started.run_dir, channel)
        finally:
            channel.close()


def program(clips: list[Clip], first: int, seconds: float) -> np.ndarray:
    """Clips one after another from `first`, 1.5 s apart, until `seconds`, then 2 s of silence."""
    gap = np.zeros(round(1.5 * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = [np.zeros(round(0.5 * SAMPLE_RATE), dtype=np.float32)]
    total, i = 0.0, first
    while total < seconds:
        clip = clips[i % len(clips)]
        parts += [clip.audio, gap]
        total += clip.seconds + 1.5
        i += 1
    parts.append(np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    return np.concatenate(parts)


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


@dataclass
class LoadResult:
    """The load section's table, its rows for the targets, and where the finals' latency went."""

    text: str
    rows: list[LoadRow]
    regressions: list[str]


def load_section(bench: BenchFleet, clips: list[Clip], ks: list[int], seconds: float, baseline: Baseline) -> LoadResult:
    rows, results, flags = [], [], []
    parts: dict[int, Breakdown] = {}
    rss_before = bench.worker_rss_mib()
    for k in ks:
        jobs = []
        for i in range(k):
            audio = program(clips, i * len(clips) // k, seconds)
            jobs.append((audio, f"bench-k{k}-{i}-{time.monotonic_ns()}"))
        runs = concurrently(jobs, bench.stub)
        time.sleep(1.0)  # the workers' canonical lines are written when each call ends
        lines = bench.request_lines()
        finals_by_request = final_lines(bench.run_dir)
        finals, interims, revised, lags, errors = [], [], 0, [], 0
        per_worker: dict[str, list[float]] = {}
        parts[k] = Breakdown()
        for (audio, _), run in zip(jobs, runs, strict=True):
            utts = utterances(audio, SPEECH_END_S)
            finals += final_latencies(utts, run.results)
            interims += first_interim_latencies(utts, run.results)
            revised += revisions(run.results)
            lags.append(run.end_lag)
            errors += bool(run.error)
            parts[k].add(breakdown(utts, run.results, run.t0, finals_by_request.get(run.request_id, [])))
            line = lines.get(run.request_id, {})
            stats = per_worker.setdefault(run.worker or "?", [0.0, 0.0])
            stats[0] += float(line.get("decode_s", 0.0))  # type: ignore[arg-type]
            stats[1] += float(line.get("audio_s", run.seconds))  # type: ignore[arg-type]
        row = LoadRow(k, percentile(finals, 50), percentile(finals, 95), max(lags), errors)
        rows.append(row)
        flag = regression(k, row.final_p95, baseline)
        flags += [flag] if flag else []
        rtf = ", ".join(f"{w.removeprefix('gpu_worker_')}: {d / a:.2f}" for w, (d, a) in sorted(per_worker.items()))
        results.append(
            [
                str(k),
                str(len(finals)),
                fmt(row.final_p50),
                fmt(row.final_p95),
                check_cell(k, row.final_p95, baseline),
                fmt(percentile(interims, 50)),
                fmt(percentile(interims, 95)),
                str(revised),
                rtf,
                fmt(row.worst_lag),
                "yes" if row.keeps_up else "no",
            ]
        )
        print(f"K={k}: {results[-1]}", file=sys.stderr, flush=True)
    rss_after = bench.worker_rss_mib()
    table = markdown_table(
        [
            "K streams",
            "utterances",
            "final p50 s",
            "final p95 s",
            "against committed p95",
            "first interim p50 s",
            "first interim p95 s",
            "revised finals",
            "RTF per worker",
            "worst end lag s",
            "keeps up",
        ],
        results,
    )
    largest = max([r.k for r in rows if r.keeps_up] or [0])
    rss = ", ".join(f"{w}: {rss_before.get(w, 0):.0f} → {v:.0f} MiB" for w, v in sorted(rss_after.items()))
    text = f"{table}\n\nLargest K that keeps up: **{largest}**. Worker RSS before → after the load runs: {rss}.\n"
    for k in (k for k in (1, 4) if k in parts):
        text += f"\n### Where a final's time goes, K = {k}\n\n{breakdown_table(parts[k])}\n"
    return LoadResult(text, rows, flags)


def accuracy_section(bench: BenchFleet, clips: list[Clip], lanes: int) -> tuple[str, float]:
    """The WER table, and streaming's WER minus Transcribe's over all clips (points)."""
    offline = [bench.stub.Transcribe(pb.TranscribeRequest(audio_content=c.data), timeout=600).transcript for c in clips]
    streamed: list[str] = [""] * len(clips)
    pad = np.zeros(SAMPLE_RATE, dtype=np.float32)

    def lane(j: int) -> None:
        for i in range(j, len(clips), lanes):
            run = play(bench.stub, np.concatenate([clips[i].audio, pad]), f"bench-acc-{i}-{time.monotonic_ns()}")
            streamed[i] = run.transcript
            print(f"  {clips[i].file}: {run.error or 'ok'}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=lane, args=(j,)) for j in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(c.group, []).append(i)
    rows = []
    for name, idx in [*sorted(groups.items()), ("**all**", list(range(len(clips))))]:
        refs = [clips[i].reference for i in idx]
        off = wer(refs, [offline[i] for i in idx])
        stream = wer(refs, [streamed[i] for i in idx])
        seconds = sum(clips[i].seconds for i in idx)
        rows.append([name, str(len(idx)), f"{seconds:.0f}", f"{off:.2f}", f"{stream:.2f}", f"{stream - off:+.2f}"])
    table = markdown_table(["set", "clips", "audio s", "Transcribe WER %", "streaming WER %", "difference"], rows)
    return table, stream - off


def hour_section(clips: list[Clip], minutes: float, threads: int) -> str:
    speech = next((c.audio for c in clips if c.file == "jfk.flac"), clips[0].audio)
    stretch = max([m for m in (1.0, 2.0, 5.0, 10.0) if m <= minutes / 5] or [minutes])
    stretches = stream_hour.run(minutes, speech, silence_s=25.0, stretch_min=stretch, threads=threads)
    rows = [
        [
            f"{s.until_min - stretch:g}-{s.until_min:g}",
            f"{1000 * s.chunk_s / max(s.chunks, 1):.1f}",
            str(s.decodes),
            f"{1000 * s.decode_s / max(s.decodes, 1):.0f}",
            f"{s.longest_buffer_s:.1f}",
            str(s.words),
            f"{s.rss_mib:.0f}",
        ]
        for s in stretches
    ]
    return markdown_table(
        [
            "stream minutes",
            "ms per 100 ms chunk",
            "decodes",
            "ms per decode",
            "longest buffer s",
            "final words",
            "RSS MiB",
        ],
        rows,
    )


@dataclass
class FleetResult:
    sections: list[str]
    rows: list[LoadRow]
    wer_gap: float | None
    regressions: list[str]


def fleet_sections(
    args: argparse.Namespace,
    clips: list[Clip],
    accuracy_clips: list[Clip],
    threads: int,
    seconds: float,
    skip: set[str],
    checkout: Path = ROOT,
) -> FleetResult:
    result = FleetResult([], [], None, [])
    sections = result.sections
    with fleet(args.workers, threads, checkout) as bench:
        warm = np.concatenate([clips[0].audio, np.zeros(SAMPLE_RATE, dtype=np.float32)])
        concurrently([(warm, f"bench-warm-{i}") for i in range(args.workers)], bench.stub)
        if "load" not in skip:
            ks = [int(k) for k in args.k.split(",")]
            load = load_section(bench, clips, ks, seconds, Baseline.load() if checkout == ROOT else Baseline())
            result.rows, result.regressions = load.rows, load.regressions
            sections += [
                f"## Latency and capacity: K concurrent real-time streams of {seconds:.0f} s\n",
                "Each stream plays clips of the recorded speech one after another, 1.5 s apart. An utterance "
                f"ends where Silero VAD, run offline over the stream's audio, finds {SPEECH_END_S} s of silence "
                "after speech (the rule the server uses, found independently of it). *final*: from the end of "
                "an utterance's audio (when a live client has captured it) to the arrival of the final result "
                "holding its last word. *first interim*: from the start of an utterance's speech to its first "
                "result. *revised finals*: finals overlapping an earlier final's audio or repeating its last two "
                "words. *RTF per worker*: decode time / audio time of the streams it served. *end lag*: from the "
                f"end of a stream's audio to the end of the call; K *keeps up* when every lag is under "
                f"{KEEPS_UP_LAG_S:g} s and no call failed. *against committed p95*: the regression check of "
                "K = 1 and 4 against bench/streaming_baseline.json (bench/stream_targets.py).\n",
                load.text,
            ]
        if "accuracy" not in skip:
            total = sum(c.seconds for c in accuracy_clips)
            table, result.wer_gap = accuracy_section(bench, accuracy_clips, args.workers)
            sections += [
                f"## Accuracy: streaming against Transcribe ({len(accuracy_clips)} clips, {total:.0f} s)\n",
                f"Each clip is one real-time stream ({args.workers} at a time) with 1 s of silence after it, and "
                "one Transcribe call. WER against the reference texts after Whisper's English normaliser "
                "(whisper-normalizer) with jiwer.\n",
                table + "\n",
            ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--quick", action="store_true", help="fewer clips, shorter streams, a 10-minute long stream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="WHISPER_CPU_THREADS (0: cores / workers)")
    parser.add_argument("--k", default="1,2,4", help="concurrent stream counts")
    parser.add_argument("--stream-seconds", type=float, help="length of each load stream (default 60, quick 30)")
    parser.add_argument("--hour-minutes", type=float, help="length of the long stream (default 60, quick 10)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: load, accuracy, hour")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streaming.md")
    parser.add_argument(
        "--baseline", type=Path, help="another scribe checkout (with its .venv) run first, side by side"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when K = 1 or 4 regressed (streaming_baseline.json)"
    )
    parser.add_argument(
        "--update-baseline", action="store_true", help="write this run's K = 1 and 4 p95 as the baseline"
    )
    args = parser.parse_args(argv)
    seconds = args.stream_seconds or (30.0 if args.quick else 60.0)
    minutes = args.hour_minutes or (10.0 if args.quick else 60.0)
    skip = set(args.skip.split(","))
    clips = load_clips(args.audio_dir)
    accuracy_clips = clips[::3] if args.quick else clips
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    load_before = os.getloadavg()
    sections = [
        "# Streaming benchmark\n",
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.2f} at the start; {args.workers} workers x {threads} threads, "
        "embedded tiny.en (int8), default stream settings (interim decode every 1 s of speech, "
        f"end of speech after {SPEECH_END_S} s of silence), beam 5 for streaming and Transcribe alike. "
        f"Streams send 100 ms LINEAR16 chunks in real time.{' Quick run.' if args.quick else ''}\n",
    ]
    regressions: list[str] = []
    if args.baseline is not None and {"load", "accuracy"} - skip:
        before = fleet_sections(args, clips, accuracy_clips, threads, seconds, skip, args.baseline.resolve())
        sections += [
            f"# Before: {args.baseline} (same run, same machine)\n",
            *before.sections,
            "# After: this checkout\n",
        ]
    if {"load", "accuracy"} - skip:
        result = fleet_sections(args, clips, accuracy_clips, threads, seconds, skip)
        sections += result.sections
        sections += ["## Live-stream targets (issues 19 and 24)\n", targets_section(result.rows, result.wer_gap) + "\n"]
        regressions = result.regressions
        if args.update_baseline:
            load = os.getloadavg()[0]
            figures = {r.k: r.final_p95 for r in result.rows if r.k in (1, 4)}
            Baseline(figures, f"{time.strftime('%Y-%m-%d')} on {platform.node()}, load average {load:.2f}").save()
    if "hour" not in skip:
        sections += [
            f"## A {minutes:.0f}-minute stream: cost and memory over time\n",
            "JFK's 11 s inaugural excerpt and 25 s of silence, looped, fed to one StreamingSession "
            f"(real Silero, real tiny.en on {threads} thread(s)) as fast as it goes, in 100 ms chunks. "
            "Per stretch of stream time: mean cost of a chunk (VAD, decodes, commits), mean cost of a decode, "
            "the longest buffer, words made final, and the process's RSS at the end of the stretch.\n",
            hour_section(clips, minutes, threads) + "\n",
        ]
    load_after = os.getloadavg()
    sections.append(f"Load average at the end: {load_after[0]:.2f}.\n")
    report = "\n".join(sections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written to {args.out}", file=sys.stderr)
    for flag in regressions:
        print(flag, file=sys.stderr)
    return 1 if args.check and regressions else 0


if __name__ == "__main__":
    sys.exit(main())
