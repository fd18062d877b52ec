"""`make bench-jobs`: batch jobs on one fleet, against the same audio sent by interactive clients.

(A) 500 short files and 5 long ones (recorded speech from ../shared/audio) sent by 8 concurrent Transcribe
    clients; (B) the same files through `scribe batch`, while one interactive client sends a short
    Transcribe every PROBE_EVERY_S seconds (its latency against an idle fleet's); (C) the batch again with the
    gateway killed with SIGKILL twice (supervisord restarts it): finished, nothing lost, audio decoded
    (the workers' own count, each window once) against the audio submitted, and the time it cost; (D) the
    job store listing 100,000 synthetic finished jobs (bench.jobs_store). Tables to bench/results/jobs.md.

    python -m bench.jobs [--short 500] [--long 5] [--long-minutes 10] [--workers 2]
    BENCH_ARGS="--short 40 --long 1 --long-minutes 3 --rows 20000" make bench-jobs     # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.fleet import BIN, ROOT, Fleet, fleet, wav_bytes
from bench.stream_metrics import normalise, wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import fleet_pb2, fleet_pb2_grpc, jobs_pb2_grpc, transcription_pb2_grpc
from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb

RESULTS = ROOT / "bench" / "results"
CLIENTS = 8
#: The interactive client's pace: often enough for a p95, rare enough to take little from the batch.
PROBE_EVERY_S = 2.0
PROBE_CLIP = "ljspeech/LJ001-0004.wav"  # 5.1 s


@dataclass(frozen=True)
class File:
    path: Path
    seconds: float
    reference: str


def dataset(audio_dir: Path, folder: Path, shorts: int, longs: int, long_minutes: float) -> list[File]:
    """`shorts` copies of the set's clips up to 30 s (in turn), and `longs` recordings of `long_minutes`
    made of its clips one after another (each starting at another clip), with their reference texts."""
    with open(audio_dir / "manifest.tsv") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")]
    short_rows = [r for r in rows if float(r["duration_s"]) <= 30]
    files = []
    folder.mkdir(parents=True)
    for i in range(shorts):
        row = short_rows[i % len(short_rows)]
        source = audio_dir / row["file"]
        path = folder / f"{i:04d}_{source.name}"
        shutil.copy(source, path)
        files.append(File(path, float(row["duration_s"]), row["reference_text"]))
    decoded = [(decode_container((audio_dir / r["file"]).read_bytes(), 3600), r["reference_text"]) for r in rows]
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    for n in range(longs):
        parts, texts, total = [], [], 0.0
        k = n * 7
        while total < long_minutes * 60:
            samples, text = decoded[k % len(decoded)]
            parts += [samples, gap]
            texts.append(text)
            total += (samples.size + gap.size) / SAMPLE_RATE
            k += 1
        path = folder / f"long_{n}.wav"
        path.write_bytes(wav_bytes(np.concatenate(parts)))
        files.append(File(path, total, " ".join(texts)))
    return files


def decoded_seconds(address: str) -> float:
    """Audio the workers have decoded since they started (their health reports, each window once)."""
    time.sleep(1.5)  # a health poll after the last decode
    with grpc.insecure_channel(address) as channel:
        listed = fleet_pb2_grpc.FleetServiceStub(channel).ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=10)
    return sum(w.health.batch.audio_seconds_decoded for w in listed.workers if w.HasField("health"))


def transcribe_clients(address: str, files: list[File]) -> tuple[float, dict[Path, str]]:
    """Every file by CLIENTS concurrent Transcribe calls; (wall seconds, transcript of each)."""
    from concurrent.futures import ThreadPoolExecutor

    options = [("grpc.max_send_message_length", 2**30), ("grpc.max_receive_message_length", 2**30)]
    channel = grpc.insecure_channel(address, options=options)
    stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)

    def one(file: File) -> tuple[Path, str]:
        response = stub.Transcribe(pb.TranscribeRequest(audio_content=file.path.read_bytes()), timeout=3600)
        return file.path, response.transcript

    started = time.perf_counter()
    # Longest first, as a user with a pool of clients would queue them, so no long file starts last.
    with ThreadPoolExecutor(CLIENTS) as pool:
        out = dict(pool.map(one, sorted(files, key=lambda f: -f.seconds)))
    took = time.perf_counter() - started
    channel.close()
    return took, out


class Prober:
    """One interactive client: a short Transcribe every `every_s` seconds while running; latencies in s."""

    def __init__(self, address: str, clip: bytes, every_s: float = PROBE_EVERY_S) -> None:
        self._stub = transcription_pb2_grpc.TranscriptionServiceStub(grpc.insecure_channel(address))
        self._request = pb.TranscribeRequest(audio_content=clip)
        self._every = every_s
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.calls = 0  # answered or not: each may have been decoded
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, count: int) -> list[float]:
        for _ in range(count):
            self._one()
            time.sleep(self._every)
        return list(self.latencies)

    def _one(self) -> None:
        self.calls += 1
        started = time.perf_counter()
        try:
            self._stub.Transcribe(self._request, timeout=120)
            self.latencies.append(time.perf_counter() - started)
        except grpc.RpcError:
            pass  # the gateway is being killed (run C): not a latency

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            self._stop.wait(self._every)

    def __enter__(self) -> Prober:
        self.latencies = []
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gateway_pid(f: Fleet) -> int:
    done = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(f.conf), "pid", "gateway"], env=f.env, capture_output=True, text=True
    )
    return int(done.stdout.strip() or 0)


def run_batch(f: Fleet, inputs: Path, out: Path, kill_at: list[float]) -> tuple[float, str, int]:
    """`scribe batch` of every input; kills the gateway (SIGKILL) at each of `kill_at` seconds.
    (wall seconds, its stderr, kills made)."""
    command = [
        str(BIN / "scribe"),
        "--config",
        str(f.conf),
        "batch",
        str(inputs),
        "--out",
        str(out),
        "--format",
        "json",
        "--address",
        f.address,
        "--uploads",
        "4",
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        batch = subprocess.Popen(command, env=f.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        kills = 0
        for at in kill_at:
            while batch.poll() is None and time.perf_counter() - started < at:
                time.sleep(0.2)
            pid = gateway_pid(f)
            if batch.poll() is None and pid:
                os.kill(pid, signal.SIGKILL)
                kills += 1
                print(f"bench: gateway {pid} killed at {time.perf_counter() - started:.0f} s", file=sys.stderr)
        batch.wait()
        took = time.perf_counter() - started
        err.seek(0)
        text = err.read()
    if batch.returncode:
        raise RuntimeError(f"scribe batch failed ({batch.returncode}): {text[-3000:]}")
    return took, text, kills


def outputs(files: list[File], inputs: Path, out: Path) -> dict[Path, str]:
    texts = {}
    for file in files:
        written = out / file.path.relative_to(inputs).with_suffix(".json")
        if written.is_file():
            texts[file.path] = json.loads(written.read_text())["text"]
    return texts


def job_runs(address: str) -> tuple[int, int]:
    """(jobs listed, jobs that ran more than once) over the whole store."""
    with grpc.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        token, total, resumed = "", 0, 0
        while True:
            page = stub.ListJobs(jpb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
            total += len(page.jobs)
            resumed += sum(1 for j in page.jobs if j.runs > 1)
            token = page.next_page_token
            if not token:
                return total, resumed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else float("nan")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--short", type=int, default=500)
    parser.add_argument("--long", type=int, default=5)
    parser.add_argument("--long-minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic jobs for the listing table")
    args = parser.parse_args()
    if not (args.audio_dir / "manifest.tsv").is_file():
        sys.exit(f"no recorded speech at {args.audio_dir} (expects manifest.tsv): pass --audio-dir")
    home = Path(tempfile.mkdtemp(prefix="scribe-bench-jobs-"))
    inputs = home / "in"
    files = dataset(args.audio_dir, inputs, args.short, args.long, args.long_minutes)
    audio_s = sum(f.seconds for f in files)
    probe_clip = (args.audio_dir / PROBE_CLIP).read_bytes()
    probe_s = decode_container(probe_clip, 60).size / SAMPLE_RATE
    print(f"bench: {len(files)} files, {audio_s:.0f} s of audio; load {load()}", file=sys.stderr)
    with fleet(args.workers, 1, output=sys.stderr) as f:
        prober = Prober(f.address, probe_clip, every_s=0.5)
        idle = prober.sample(30)
        d0 = decoded_seconds(f.address)
        wall_a, direct = transcribe_clients(f.address, files)
        d1 = decoded_seconds(f.address)
        print(f"bench: (A) {wall_a:.0f} s; load {load()}", file=sys.stderr)
        with Prober(f.address, probe_clip) as busy:
            wall_b, _, _ = run_batch(f, inputs, home / "out_b", [])
        d2 = decoded_seconds(f.address)
        batch_b = outputs(files, inputs, home / "out_b")
        print(f"bench: (B) {wall_b:.0f} s; load {load()}", file=sys.stderr)
        wall_c, _, kills = run_batch(f, inputs, home / "out_c", [wall_b / 3, 2 * wall_b / 3])
        d3 = decoded_seconds(f.address)
        # Audio each run had decoded; the interactive client's during (B) is not the batch's.
        dec_a, dec_b, dec_c = d1 - d0, d2 - d1 - probe_s * busy.calls, d3 - d2
        batch_c = outputs(files, inputs, home / "out_c")
        jobs_total, resumed = job_runs(f.address)
        print(f"bench: (C) {wall_c:.0f} s, {kills} kills; load {load()}", file=sys.stderr)

    def score(texts: dict[Path, str]) -> float:
        return wer([x.reference for x in files], [texts.get(x.path, "") for x in files])

    def same(texts: dict[Path, str]) -> str:
        equal = sum(1 for x in files if normalise(texts.get(x.path, "-")) == normalise(direct[x.path]))
        exact = sum(1 for x in files if texts.get(x.path) == direct[x.path])
        return f"{exact} exact, {equal} after normalising, of {len(files)}"

    rows = [
        f"Machine: {os.cpu_count()} CPU cores, no GPU; {args.workers} workers of tiny.en (embedded, int8, 1 thread "
        f"each). Audio: {args.short} short files (the clips of ../shared/audio up to 30 s, in turn) and {args.long} "
        f"recordings of {args.long_minutes:g} min (its clips one after another): {len(files)} files, "
        f"{audio_s / 3600:.2f} h. RTFx = audio seconds per wall second. Load average at the end: {load()}.",
        "",
        "| Run | Wall s | RTFx | WER % | Files | Same text as (A) | Audio decoded / submitted |",
        "|---|---:|---:|---:|---:|---|---:|",
        f"| (A) {CLIENTS} concurrent Transcribe clients | {wall_a:.1f} | {audio_s / wall_a:.1f} | {score(direct):.1f} | "
        f"{len(direct)} | - | {dec_a / audio_s:.3f} |",
        f"| (B) `scribe batch` (with the interactive client below) | {wall_b:.1f} | {audio_s / wall_b:.1f} | "
        f"{score(batch_b):.1f} | {len(batch_b)} | {same(batch_b)} | {dec_b / audio_s:.3f} |",
        f"| (C) `scribe batch`, gateway SIGKILLed {kills} times | {wall_c:.1f} | {audio_s / wall_c:.1f} | "
        f"{score(batch_c):.1f} | {len(batch_c)} | {same(batch_c)} | {dec_c / audio_s:.3f} |",
        "",
        f"(C) against (B): {wall_c - wall_b:+.1f} s; {resumed} of {jobs_total} jobs in the store ran more than once "
        f"(resumed after a kill); audio decoded again because of the kills: {(dec_c - dec_b) / audio_s * 100:+.1f}% "
        "of the audio submitted (the workers' count; long silences are not decoded, so a run decodes a little less "
        "than it submits).",
        "",
        f"Interactive Transcribe of a {probe_s:.1f} s clip, one at a time: every 0.5 s on the idle fleet, every "
        f"{PROBE_EVERY_S:g} s during (B) (its audio is left out of (B)'s decoded figure):",
        "",
        "| Fleet | Calls | p50 s | p95 s | p95 / idle p95 |",
        "|---|---:|---:|---:|---:|",
        f"| idle | {len(idle)} | {statistics.median(idle):.3f} | {p95(idle):.3f} | 1.00 |",
        f"| during (B) | {len(busy.latencies)} | {statistics.median(busy.latencies):.3f} | {p95(busy.latencies):.3f} | "
        f"{p95(busy.latencies) / p95(idle):.2f} |",
        "",
        "Targets: (C) finishes every file with decoded/submitted at most 1.05; (B) RTFx at least (A)'s; the "
        "interactive p95 at most 2x idle.",
    ]
    from bench.jobs_store import table
    from tests.postgres import postgres_server

    with postgres_server() as pg:
        listing = table(args.rows, pg.url)
    text = "\n".join(rows) + f"\n\n## Listing {args.rows:,} jobs\n\n" + listing + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jobs.md").write_text(text)
    print(text)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
