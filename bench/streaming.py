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
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench import stream_hour
from bench.fleet import ROOT
from bench.fleet import fleet as started_fleet
from bench.stream_metrics import (
    Received,
    final_latencies,
    first_interim_latencies,
    markdown_table,
    percentile,
    revisions,
    utterances,
    wer,
)
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb

CHUNK_S = 0.1  # what a live client sends: 100 ms of audio, as soon as it has been captured
SPEECH_END_S = 0.5  # the server default (STREAM_SPEECH_END_TIMEOUT_S), used to find utterance ends
KEEPS_UP_LAG_S = 2.0
TARGET_P95_S = 1.5  # the bound on end-of-utterance latency with one stream


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
def fleet(workers: int, threads: int) -> Iterator[BenchFleet]:
    with started_fleet(workers, threads) as started:
        channel = grpc.insecure_channel(started.address)
        try:
            yield BenchFleet(started.address, started.run_dir, channel)
        finally:
            channel.close()


@dataclass
class StreamRun:
    """One stream as the client saw it."""

    request_id: str
    seconds: float
    results: list[Received] = field(default_factory=list)
    worker: str = ""
    end_lag: float = float("nan")  # from the end of the audio to the end of the call
    error: str = ""

    @property
    def transcript(self) -> str:
        return " ".join(r.text for r in self.results if r.final)


def play(
    stub: transcription_pb2_grpc.TranscriptionServiceStub, audio: np.ndarray, request_id: str, model: str = ""
) -> StreamRun:
    """Stream 16 kHz audio in real time: each 100 ms chunk is sent once it would have been captured."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(CHUNK_S * SAMPLE_RATE) * 2
    run = StreamRun(request_id, audio.size / SAMPLE_RATE)
    clock = {"t0": 0.0}

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            streaming_config=pb.StreamingConfig(
                encoding=pb.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=SAMPLE_RATE,
                interim_results=True,
                options=pb.RecognitionOptions(enable_word_time_offsets=True, model=model),
            )
        )
        clock["t0"] = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            delay = clock["t0"] + (k + 1) * CHUNK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield pb.StreamingTranscribeRequest(audio_content=pcm[i : i + step])

    try:
        for response in stub.StreamingTranscribe(requests(), metadata=(("x-request-id", request_id),), timeout=7200):
            arrived = time.monotonic() - clock["t0"]
            run.worker = response.worker_id
            for r in response.results:
                alt = r.alternatives[0]
                run.results.append(
                    Received(
                        arrived=arrived,
                        final=r.is_final,
                        start=r.result_start_offset.ToNanoseconds() / 1e9,
                        end=r.result_end_offset.ToNanoseconds() / 1e9,
                        text=alt.transcript,
                        words=[
                            (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.word)
                            for w in alt.words
                        ],
                    )
                )
    except grpc.RpcError as err:
        run.error = f"{err.code().name}: {err.details()}"
    run.end_lag = time.monotonic() - clock["t0"] - run.seconds
    return run


def concurrently(
    jobs: list[tuple[np.ndarray, str]], stub: transcription_pb2_grpc.TranscriptionServiceStub
) -> list[StreamRun]:
    runs: list[StreamRun | None] = [None] * len(jobs)

    def worker(i: int) -> None:
        runs[i] = play(stub, *jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in runs if r is not None]


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


def load_section(bench: BenchFleet, clips: list[Clip], ks: list[int], seconds: float) -> str:
    rows = []
    largest = largest_fast = 0
    rss_before = bench.worker_rss_mib()
    for k in ks:
        jobs = []
        for i in range(k):
            audio = program(clips, i * len(clips) // k, seconds)
            jobs.append((audio, f"bench-k{k}-{i}-{time.monotonic_ns()}"))
        runs = concurrently(jobs, bench.stub)
        time.sleep(1.0)  # the workers' canonical lines are written when each call ends
        lines = bench.request_lines()
        finals, interims, revised, lags, errors = [], [], 0, [], 0
        per_worker: dict[str, list[float]] = {}
        for (audio, _), run in zip(jobs, runs, strict=True):
            utts = utterances(audio, SPEECH_END_S)
            finals += final_latencies(utts, run.results)
            interims += first_interim_latencies(utts, run.results)
            revised += revisions(run.results)
            lags.append(run.end_lag)
            errors += bool(run.error)
            line = lines.get(run.request_id, {})
            stats = per_worker.setdefault(run.worker or "?", [0.0, 0.0])
            stats[0] += float(line.get("decode_s", 0.0))  # type: ignore[arg-type]
            stats[1] += float(line.get("audio_s", run.seconds))  # type: ignore[arg-type]
        keeps_up = not errors and max(lags) < KEEPS_UP_LAG_S
        largest = k if keeps_up else largest
        meets = keeps_up and percentile(finals, 95) < TARGET_P95_S
        largest_fast = k if meets else largest_fast
        rtf = ", ".join(f"{w.removeprefix('gpu_worker_')}: {d / a:.2f}" for w, (d, a) in sorted(per_worker.items()))
        rows.append(
            [
                str(k),
                str(len(finals)),
                fmt(percentile(finals, 50)),
                fmt(percentile(finals, 95)),
                fmt(percentile(interims, 50)),
                fmt(percentile(interims, 95)),
                str(revised),
                rtf,
                fmt(max(lags)),
                "yes" if keeps_up else "no",
                "yes" if meets else "no",
            ]
        )
        print(f"K={k}: {rows[-1]}", file=sys.stderr, flush=True)
    rss_after = bench.worker_rss_mib()
    table = markdown_table(
        [
            "K streams",
            "utterances",
            "final p50 s",
            "final p95 s",
            "first interim p50 s",
            "first interim p95 s",
            "revised finals",
            "RTF per worker",
            "worst end lag s",
            "keeps up",
            f"final p95 < {TARGET_P95_S:g} s",
        ],
        rows,
    )
    rss = ", ".join(f"{w}: {rss_before.get(w, 0):.0f} → {v:.0f} MiB" for w, v in sorted(rss_after.items()))
    return (
        f"{table}\n\nLargest K that keeps up: **{largest}**; largest K whose final p95 is under "
        f"{TARGET_P95_S:g} s: **{largest_fast}**. Worker RSS before → after the load runs: {rss}.\n"
    )


def accuracy_section(bench: BenchFleet, clips: list[Clip], lanes: int) -> str:
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
    return markdown_table(["set", "clips", "audio s", "Transcribe WER %", "streaming WER %", "difference"], rows)


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


def fleet_sections(
    args: argparse.Namespace,
    clips: list[Clip],
    accuracy_clips: list[Clip],
    threads: int,
    seconds: float,
    skip: set[str],
) -> list[str]:
    sections: list[str] = []
    with fleet(args.workers, threads) as bench:
        warm = np.concatenate([clips[0].audio, np.zeros(SAMPLE_RATE, dtype=np.float32)])
        concurrently([(warm, f"bench-warm-{i}") for i in range(args.workers)], bench.stub)
        if "load" not in skip:
            ks = [int(k) for k in args.k.split(",")]
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
                f"{KEEPS_UP_LAG_S:g} s and no call failed.\n",
                load_section(bench, clips, ks, seconds),
            ]
        if "accuracy" not in skip:
            total = sum(c.seconds for c in accuracy_clips)
            sections += [
                f"## Accuracy: streaming against Transcribe ({len(accuracy_clips)} clips, {total:.0f} s)\n",
                f"Each clip is one real-time stream ({args.workers} at a time) with 1 s of silence after it, and "
                "one Transcribe call. WER against the reference texts after Whisper's English normaliser "
                "(whisper-normalizer) with jiwer.\n",
                accuracy_section(bench, accuracy_clips, args.workers) + "\n",
            ]
    return sections


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
    if {"load", "accuracy"} - skip:
        sections += fleet_sections(args, clips, accuracy_clips, threads, seconds, skip)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
