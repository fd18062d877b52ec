"""Long-recording benchmark (`make bench-long`): one hour-long recording on 1 worker and on N workers,
and four hour-long recordings at once, each sent as a user's client sends it (TranscribeUpload, with
progress). Wall time, real-time factor, WER against the references and the peak RSS of the gateway and
of each worker, beside the figures the product we model advertises.

Audio: the recorded English speech in ../shared/audio, joined clip after clip (with 0.5 s between
them, the set over again as often as needed) into one recording of --minutes; the reference is the
clips' reference texts in the same order.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scribe_client import ScribeClient

from bench.fleet import ROOT, fleet, wav_bytes
from bench.stream_metrics import markdown_table, wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import transcription_pb2 as pb

RESULTS = ROOT / "bench" / "results"
GAP_S = 0.5
FOUR = "four recordings at once"


def build_recording(audio_dir: Path, minutes: float) -> tuple[np.ndarray, str]:
    """The clips of the set in order, over and over, until the recording is `minutes` long."""
    with open(audio_dir / "manifest.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    clips = [(decode_container((audio_dir / r["file"]).read_bytes(), 3600), r["reference_text"]) for r in rows]
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    refs: list[str] = []
    total = 0
    while total < minutes * 60 * SAMPLE_RATE:
        for samples, ref in clips:
            parts += [samples, gap]
            refs.append(ref)
            total += samples.size + gap.size
            if total >= minutes * 60 * SAMPLE_RATE:
                break
    return np.concatenate(parts), " ".join(refs)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fleet_processes(run_dir: Path) -> dict[str, int]:
    """pid of the gateway and of each worker of the fleet whose RUN_DIR is `run_dir`."""
    found = {}
    marker = f"RUN_DIR={run_dir}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if b"services.gateway" in cmdline:
            found["gateway"] = int(proc.name)
        elif b"services.gpu_worker" in cmdline:
            num = cmdline[cmdline.index(b"--process-num") + 1].decode() if b"--process-num" in cmdline else proc.name
            found[f"gpu_worker_{int(num):02d}"] = int(proc.name)
    return found


@contextmanager
def peak_rss(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """Peak RSS in MiB of each process while the block runs, sampled every 50 ms."""
    peaks = {name: _rss_mib(pid) for name, pid in pids.items()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, pid in pids.items():
                peaks[name] = max(peaks[name], _rss_mib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        stop.set()
        sampler.join()


@dataclass(frozen=True)
class Run:
    scenario: str
    workers: int
    recordings: int
    audio_s: float
    wall_s: float
    wer: float
    gateway_mib: float
    worker_mib: list[float]
    workers_used: str


def upload(address: str, path: Path) -> pb.TranscribeResponse:
    with ScribeClient(address, timeout=None) as client:
        for report in client.upload(path):
            if report.HasField("result"):
                return report.result
    raise RuntimeError("no result")


def measure(scenario: str, workers: int, recordings: int, path: Path, audio_s: float, reference: str) -> Run:
    with fleet(workers, 1) as started:
        pids = fleet_processes(started.run_dir)
        with peak_rss(pids) as peaks, ThreadPoolExecutor(recordings) as pool:
            began = time.perf_counter()
            results = list(pool.map(lambda _: upload(started.address, path), range(recordings)))
            wall = time.perf_counter() - began
    used = sorted({w for r in results for w in r.worker_id.split(",")})
    print(f"{scenario}: {wall:.1f} s on {', '.join(used)}", file=sys.stderr)
    return Run(
        scenario=scenario,
        workers=workers,
        recordings=recordings,
        audio_s=audio_s * recordings,
        wall_s=wall,
        wer=wer([reference] * recordings, [r.transcript for r in results]),
        gateway_mib=peaks.get("gateway", 0.0),
        worker_mib=[v for k, v in sorted(peaks.items()) if k != "gateway"],
        workers_used=",".join(used),
    )


def table(runs: list[Run], minutes: float, cores: int, file_mb: float) -> str:
    base = runs[0].wall_s
    header = ["Scenario", "Workers", "Audio", "Wall s", "RTFx", "vs 1 worker", "WER %", "Gateway peak RSS MiB"]
    header += ["Worker peak RSS MiB", "Product (1 GPU per worker)"]
    claims = {
        "one recording, 1 worker": "70x real time: a 1-hour file in ~50 s",
        FOUR: "4x 1-hour files on 4 workers",
    }
    rows = [
        [
            r.scenario,
            str(r.workers),
            f"{r.recordings} x {minutes:g} min",
            f"{r.wall_s:.1f}",
            f"{r.audio_s / r.wall_s:.1f}",
            f"{base / r.wall_s * r.recordings:.2f}x",
            f"{r.wer:.1f}",
            f"{r.gateway_mib:.0f}",
            " / ".join(f"{m:.0f}" for m in r.worker_mib),
            claims.get(r.scenario, ""),
        ]
        for r in runs
    ]
    intro = (
        f"Machine: {cores} CPU cores, no GPU; model tiny.en (embedded), int8, beam 5, one thread per worker. "
        f"Recording: {minutes:g} min ({file_mb:.0f} MB of 16 kHz WAV) of recorded speech from ../shared/audio, "
        "sent with TranscribeUpload as the CLI sends a file too large for one message. RTFx = audio seconds per "
        "wall second; 'vs 1 worker' = audio per second against one recording on one worker. WER against the "
        "reference texts after Whisper's English normaliser, with jiwer. The product's figures are for one GPU per "
        "worker and are quoted, not measured here.\n"
    )
    return intro + "\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--minutes", type=float, default=60, help="length of each recording (default 60)")
    parser.add_argument("--workers", type=int, default=0, help="N for the N-worker runs (default: the cores)")
    parser.add_argument("--recordings", type=int, default=4, help="recordings at once in the last run (default 4)")
    args = parser.parse_args()
    if not (args.audio_dir / "manifest.tsv").is_file():
        sys.exit(f"no recorded speech at {args.audio_dir} (expects manifest.tsv): pass --audio-dir")
    cores = len(os.sched_getaffinity(0))
    n = args.workers or cores
    samples, reference = build_recording(args.audio_dir, args.minutes)
    audio_s = samples.size / SAMPLE_RATE
    with tempfile.TemporaryDirectory(prefix="scribe-bench-long-") as tmp:
        path = Path(tmp) / "recording.wav"
        path.write_bytes(wav_bytes(samples))
        del samples
        file_mb = path.stat().st_size / 1e6
        plan: list[tuple[str, int, int]] = [
            ("one recording, 1 worker", 1, 1),
            (f"one recording, {n} workers", n, 1),
            (FOUR if args.recordings == 4 else f"{args.recordings} recordings at once", n, args.recordings),
        ]
        runs = [measure(name, workers, count, path, audio_s, reference) for name, workers, count in plan]
    out = table(runs, args.minutes, cores, file_mb)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "long.md").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
