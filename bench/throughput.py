"""Throughput benchmark (`make bench`): faster-whisper direct vs through the gateway, worker scaling,
files in parallel, one long file sharded. All figures come from one run, side by side, and are
reported as ratios; absolute times mean something only on the machine that produced them.

Audio: the recorded English speech in ../shared/audio (real voices, not synthesis).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from bench.fleet import ROOT, fleet, wav_bytes
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc

RESULTS = ROOT / "bench" / "results"


def load_clips(audio_dir: Path, limit_s: float) -> list[np.ndarray]:
    clips, total = [], 0.0
    with open(audio_dir / "manifest.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            samples = decode_container((audio_dir / row["file"]).read_bytes(), max_seconds=3600)
            clips.append(samples)
            total += samples.size / SAMPLE_RATE
            if total >= limit_s:
                break
    return clips


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def stub(address: str) -> transcription_pb2_grpc.TranscriptionServiceStub:
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 2**30), ("grpc.max_receive_message_length", 2**30)]
    )
    return transcription_pb2_grpc.TranscriptionServiceStub(channel)


def parallel(address: str, files: list[bytes], clients: int) -> None:
    s = stub(address)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda data: s.Transcribe(pb.TranscribeRequest(audio_content=data), timeout=3600), files))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--seconds", type=float, default=300, help="audio to use from the set (default 300)")
    parser.add_argument("--runs", type=int, default=2, help="repetitions of each measurement; the best counts")
    parser.add_argument("--quick", action="store_true", help="60 s of audio, one run: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 60, 1
    if not (args.audio_dir / "manifest.tsv").is_file():
        sys.exit(f"no recorded speech at {args.audio_dir} (expects manifest.tsv): pass --audio-dir")
    cores = len(os.sched_getaffinity(0))
    clips = load_clips(args.audio_dir, args.seconds)
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    long_audio = np.concatenate([np.concatenate([c, gap]) for c in clips])
    long_wav = wav_bytes(long_audio)
    long_s = long_audio.size / SAMPLE_RATE
    files = [wav_bytes(c) for c in clips]
    files_s = sum(c.size for c in clips) / SAMPLE_RATE
    clients = 2 * cores
    print(f"audio: {len(clips)} clips, {files_s:.0f} s; long recording {long_s:.0f} s; {cores} cores", file=sys.stderr)

    # (a) faster-whisper in this process, as a user would call it.
    from faster_whisper import WhisperModel

    from services.gpu_worker.engines.faster_whisper_engine import resolve_model

    model = WhisperModel(resolve_model("embedded")[0], device="cpu", compute_type="int8", cpu_threads=cores)

    def direct() -> None:
        segments, _ = model.transcribe(decode_container(long_wav, max_seconds=86400), beam_size=5)
        list(segments)

    t_direct = best_of(args.runs, direct)

    rows: dict[str, float] = {}
    with fleet(1, cores, SHARD_MIN_SECONDS="0") as started:
        address = started.address
        s = stub(address)
        rows["gateway_1w"] = best_of(
            args.runs, lambda: s.Transcribe(pb.TranscribeRequest(audio_content=long_wav), timeout=3600)
        )
        rows["files_1w"] = best_of(args.runs, lambda: parallel(address, files, clients))
    per_n: dict[int, float] = {}
    for n in range(1, cores + 1):
        with fleet(n, 1, SHARD_MIN_SECONDS="60") as started:
            sharded = stub(started.address)

            def one_long_file(s: transcription_pb2_grpc.TranscriptionServiceStub = sharded) -> object:
                return s.Transcribe(pb.TranscribeRequest(audio_content=long_wav), timeout=3600)

            per_n[n] = best_of(args.runs, one_long_file)
            if n == cores:
                rows["files_nw"] = best_of(args.runs, lambda: parallel(started.address, files, clients))

    overhead = (rows["gateway_1w"] - t_direct) / t_direct * 100
    lines = [
        f"Machine: {cores} CPU cores, no GPU; model tiny.en (embedded), int8, beam 5. "
        f"Audio: {len(clips)} recorded clips from ../shared/audio ({files_s:.0f} s), and the same clips "
        f"joined into one {long_s:.0f} s recording. Best of {args.runs} runs. RTFx = audio seconds per wall second.",
        "",
        "| Measurement | Setup | Wall s | RTFx | Ratio |",
        "|---|---|---:|---:|---:|",
        f"| (a) faster-whisper direct, long recording | 1 process, {cores} threads | {t_direct:.1f} | "
        f"{long_s / t_direct:.1f} | 1.00 |",
        f"| (b) through the gateway, long recording | 1 worker, {cores} threads | {rows['gateway_1w']:.1f} | "
        f"{long_s / rows['gateway_1w']:.1f} | {t_direct / rows['gateway_1w']:.2f} (overhead {overhead:+.1f}%) |",
    ]
    for n, t in per_n.items():
        lines.append(
            f"| (c) long recording sharded over N={n} | {n} worker(s) x 1 thread | {t:.1f} | {long_s / t:.1f} | "
            f"{per_n[1] / t:.2f} vs N=1 |"
        )
    lines += [
        f"| (d) {len(files)} files, {clients} clients in parallel | 1 worker x {cores} threads | {rows['files_1w']:.1f} | "
        f"{files_s / rows['files_1w']:.1f} | 1.00 |",
        f"| (d) {len(files)} files, {clients} clients in parallel | {cores} workers x 1 thread | {rows['files_nw']:.1f} | "
        f"{files_s / rows['files_nw']:.1f} | {rows['files_1w'] / rows['files_nw']:.2f} |",
        "",
        f"Long recording on {cores} sharded single-thread workers vs one {cores}-thread worker: "
        f"{rows['gateway_1w'] / per_n[cores]:.2f}x sooner.",
    ]
    table = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
