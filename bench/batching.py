"""Batched decoding benchmark (`make bench`): one long recording, many short files from concurrent
clients, and a sweep of WORKER_BATCH_SIZE and BATCH_WINDOW_MS. Every figure comes from one run on one
machine, side by side, with the WER of the same output beside it. Live streams are measured by
`bench.streaming` (`make bench` runs it too).

Audio: the recorded English speech in ../shared/audio (manifest.tsv has the reference texts).
`--baseline DIR` also runs another checkout (with its own .venv), e.g. the commit before batching.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.fleet import ROOT, Fleet, fleet, wav_bytes
from bench.stream_metrics import wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    text: str


@dataclass(frozen=True)
class Row:
    how: str
    setup: str
    wall_s: float
    audio_s: float
    wer: float
    extra: str = ""

    def __post_init__(self) -> None:
        print(
            f"{self.how} | {self.setup} | {self.extra} | {self.audio_s / self.wall_s:.1f}x | WER {self.wer:.2f}",
            file=sys.stderr,
        )

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s


def load_clips(audio_dir: Path) -> list[Clip]:
    with open(audio_dir / "manifest.tsv") as f:
        return [
            Clip(decode_container((audio_dir / row["file"]).read_bytes(), max_seconds=3600), row["reference_text"])
            for row in csv.DictReader(f, delimiter="\t")
        ]


def joined(clips: list[Clip]) -> Clip:
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return Clip(np.concatenate([part for c in clips for part in (c.audio, gap)]), " ".join(c.text for c in clips))


def stub(address: str) -> transcription_pb2_grpc.TranscriptionServiceStub:
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 2**30), ("grpc.max_receive_message_length", 2**30)]
    )
    return transcription_pb2_grpc.TranscriptionServiceStub(channel)


def timed(fn: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


def through_fleet(how: str, setup: str, started: Fleet, clip: Clip) -> Row:
    data = wav_bytes(clip.audio)
    s = stub(started.address)
    wall, text = timed(lambda: s.Transcribe(pb.TranscribeRequest(audio_content=data), timeout=3600).transcript)
    return Row(how, setup, wall, clip.audio.size / SAMPLE_RATE, wer([clip.text], [text]))


def long_section(long: Clip, cores: int, baseline: Path | None, encoder_mins: list[str]) -> list[Row]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from services.gpu_worker.engines.faster_whisper_engine import resolve_model

    seconds = long.audio.size / SAMPLE_RATE
    model = WhisperModel(resolve_model("embedded")[0], device="cpu", compute_type="int8", cpu_threads=cores)

    def sequential() -> str:
        segments, _ = model.transcribe(long.audio, beam_size=5)
        return " ".join(s.text.strip() for s in segments)

    wall, text = timed(sequential)
    rows = [
        Row(
            "faster-whisper `WhisperModel.transcribe`",
            f"1 process, {cores} threads",
            wall,
            seconds,
            wer([long.text], [text]),
        )
    ]
    pipeline = BatchedInferencePipeline(model)
    for size in (4, 8, 16):

        def batched(size: int = size) -> str:
            segments, _ = pipeline.transcribe(long.audio, batch_size=size, beam_size=5)
            return " ".join(s.text.strip() for s in segments)

        wall, text = timed(batched)
        rows.append(
            Row(
                f"faster-whisper `BatchedInferencePipeline`, batch {size}",
                f"1 process, {cores} threads",
                wall,
                seconds,
                wer([long.text], [text]),
            )
        )
    runs = [(scribe_label(m), ROOT, {"ENCODER_MIN_SECONDS": m}) for m in encoder_mins]
    if baseline is not None:
        runs.append(("scribe before batching", baseline, {}))
    for label, checkout, env in runs:
        with fleet(1, cores, checkout=checkout, settings=env, SHARD_MIN_SECONDS="0") as started:
            rows.append(through_fleet(label, f"1 worker x {cores} threads", started, long))
        with fleet(cores, 1, checkout=checkout, settings=env, SHARD_MIN_SECONDS="60") as started:
            rows.append(through_fleet(label, f"{cores} workers x 1 thread", started, long))
    return rows


def scribe_label(encoder_min: str) -> str:
    return "scribe, 30 s encode" if float(encoder_min) >= 30 else f"scribe, encode at length (min {encoder_min} s)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def files_run(how: str, setup: str, started: Fleet, clips: list[Clip], clients: int) -> Row:
    s = stub(started.address)
    files = [wav_bytes(c.audio) for c in clips]

    def one(data: bytes) -> tuple[float, str]:
        return timed(lambda: s.Transcribe(pb.TranscribeRequest(audio_content=data), timeout=3600).transcript)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, files))
    wall = time.perf_counter() - began
    latencies = [t for t, _ in done]
    return Row(
        how,
        setup,
        wall,
        sum(c.audio.size for c in clips) / SAMPLE_RATE,
        wer([c.text for c in clips], [text for _, text in done]),
        f"{clients} | {statistics.median(latencies):.2f} | {percentile(latencies, 0.95):.2f}",
    )


def files_section(
    clips: list[Clip], cores: int, baseline: Path | None, client_counts: list[int], encoder_mins: list[str]
) -> list[Row]:
    from faster_whisper import WhisperModel

    from services.gpu_worker.engines.faster_whisper_engine import resolve_model

    model = WhisperModel(resolve_model("embedded")[0], device="cpu", compute_type="int8", cpu_threads=cores)
    texts: list[str] = []
    began = time.perf_counter()
    for clip in clips:
        segments, _ = model.transcribe(clip.audio, beam_size=5)
        texts.append(" ".join(s.text.strip() for s in segments))
    audio_s = sum(c.audio.size for c in clips) / SAMPLE_RATE
    rows = [
        Row(
            "faster-whisper, one file after another",
            f"1 process, {cores} threads",
            time.perf_counter() - began,
            audio_s,
            wer([c.text for c in clips], texts),
            "1 | - | -",
        )
    ]
    setups: list[tuple[str, Path, int, int, list[int], dict[str, str]]] = []
    for m in encoder_mins:
        env = {"ENCODER_MIN_SECONDS": m}
        setups += [
            (scribe_label(m), ROOT, 1, cores, client_counts, env),
            (scribe_label(m), ROOT, cores, 1, client_counts, env),
        ]
    if baseline is not None:
        setups += [
            ("scribe before batching", baseline, 1, cores, [8], {}),
            ("scribe before batching", baseline, cores, 1, [8], {}),
        ]
    for label, checkout, workers, threads, counts, env in setups:
        with fleet(workers, threads, checkout=checkout, settings=env) as started:
            for clients in counts:
                rows.append(files_run(label, f"{workers} worker(s) x {threads} thread(s)", started, clips, clients))
    return rows


def sweep_section(clips: list[Clip], long: Clip, cores: int) -> list[Row]:
    rows = []
    settings = [(size, 10) for size in (1, 4, 8, 16)] + [(8, 0), (8, 50)]
    for size, window_ms in settings:
        env = {"WORKER_BATCH_SIZE": str(size), "BATCH_WINDOW_MS": str(window_ms), "SHARD_MIN_SECONDS": "0"}
        with fleet(1, cores, ROOT, settings=env) as started:
            setup = f"batch {size}, window {window_ms} ms"
            rows.append(files_run("short files, 8 clients", setup, started, clips, 8))
            rows.append(through_fleet("long recording", setup, started, long))
    return rows


def markdown(long_rows: list[Row], file_rows: list[Row], sweep_rows: list[Row], cores: int) -> str:
    out = [
        f"Machine: {cores} CPU cores, no GPU (load average {os.getloadavg()[0]:.1f} at the end). Model: embedded "
        "tiny.en, int8, beam 5. RTFx = audio seconds per wall second. ENCODER_MIN_SECONDS: docs/encoder.md. WER: Whisper's English normaliser and jiwer against the references in ../shared/audio/manifest.tsv.",
    ]
    if long_rows:
        base = long_rows[0].rtfx
        out += [
            "",
            "### One long recording",
            "",
            "| How | Setup | Wall s | RTFx | vs sequential | WER % |",
            "|---|---|---:|---:|---:|---:|",
            *(
                f"| {r.how} | {r.setup} | {r.wall_s:.1f} | {r.rtfx:.1f} | {r.rtfx / base:.2f} | {r.wer:.2f} |"
                for r in long_rows
            ),
        ]
    if file_rows:
        base = file_rows[0].rtfx
        out += [
            "",
            "### Many short files from concurrent clients",
            "",
            "| How | Setup | Clients | p50 latency s | p95 latency s | Wall s | Aggregate RTFx | vs sequential | WER % |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {r.how} | {r.setup} | {r.extra} | {r.wall_s:.1f} | {r.rtfx:.1f} | {r.rtfx / base:.2f} | {r.wer:.2f} |"
                for r in file_rows
            ),
        ]
    if sweep_rows:
        out += [
            "",
            f"### WORKER_BATCH_SIZE and BATCH_WINDOW_MS (1 worker x {cores} threads)",
            "",
            "| Workload | Setting | Wall s | RTFx | WER % |",
            "|---|---|---:|---:|---:|",
            *(f"| {r.how} | {r.setup} | {r.wall_s:.1f} | {r.rtfx:.1f} | {r.wer:.2f} |" for r in sweep_rows),
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--baseline", type=Path, help="another scribe checkout with its .venv, run side by side")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrent clients for the short files")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: long, files, sweep")
    parser.add_argument(
        "--encoder-min", default="10,30", help="ENCODER_MIN_SECONDS values scribe runs with, side by side"
    )
    parser.add_argument("--quick", action="store_true", help="10 clips, 1 and 8 clients, no sweep: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS / "batching.md")
    args = parser.parse_args()
    if not (args.audio_dir / "manifest.tsv").is_file():
        sys.exit(f"no recorded speech at {args.audio_dir} (expects manifest.tsv): pass --audio-dir")
    cores = len(os.sched_getaffinity(0))
    clips = load_clips(args.audio_dir)
    skip = set(args.skip.split(","))
    counts = [int(c) for c in args.clients.split(",")]
    if args.quick:
        clips, counts, skip = clips[:10], [1, 8], skip | {"sweep"}
    long = joined(clips)
    print(f"{len(clips)} clips, long recording {long.audio.size / SAMPLE_RATE:.0f} s, {cores} cores", file=sys.stderr)
    mins = args.encoder_min.split(",")
    long_rows = [] if "long" in skip else long_section(long, cores, args.baseline, mins)
    file_rows = [] if "files" in skip else files_section(clips, cores, args.baseline, counts, mins)
    sweep_rows = [] if "sweep" in skip else sweep_section(clips, long, cores)
    text = markdown(long_rows, file_rows, sweep_rows, cores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
