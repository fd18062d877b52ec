"""The GPU check (`bench/gpu/run.sh`): the torch engine on a real GPU, over real supervisord and the real
gateway, in one run of at most `--budget-s` seconds. Each step is timed against the budget; a step that no
longer fits is reported as skipped, and the report is written after every step, so a run cut short still
brings back what it measured.

Steps: (1) every worker's GetWorkerHealth shows the GPU's name, UUID and VRAM through NVML, and its own
VRAM agrees with `nvidia-smi --query-compute-apps` within 5 %; (2) `scribe start` with
GPU_SCALE_WORKERS=auto starts as many workers as fit and says why; (3) aggregate real-time factor for
1, 2 and 4 workers at batch 1 and at the best batch of a sweep, many files at once, on the embedded
tiny.en (WER checked against what the clips say) and on a synthetic large-v2-shaped model (random
weights, a fixed number of tokens per window); (4) a worker pushed past its VRAM by another process
turns NOT_SERVING with the reason, recovers when the memory comes back, and nothing crashes; (5) the
encoder's cost and the WER of the committed clips at each encoder input length (bench/gpu/buckets.py).

`--device cpu` rehearses every step on a machine without a GPU, at tiny sizes; the NVML steps then say
that they have nothing to compare.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from bench.fleet import ROOT, Fleet, fleet, wav_bytes
from bench.gpu import synthetic
from bench.gpu.buckets import step_buckets
from bench.stream_metrics import wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.gen import fleet_pb2, fleet_pb2_grpc, transcription_pb2_grpc
from services.gen import transcription_pb2 as pb
from tests.helpers import SAID, clip

CRASH = re.compile(r"exited: (\S+) \(terminated by (SIGSEGV|SIGABRT|SIGBUS|SIGFPE|SIGILL)")


class Report:
    """Markdown written after every step, and the same facts as JSON lines."""

    def __init__(self, path: Path, started: float, budget_s: float) -> None:
        self.path, self.started, self.budget_s = path, started, budget_s
        self.lines: list[str] = []
        self.facts: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def add(self, line: str, **fact: Any) -> None:
        print(line, file=sys.stderr, flush=True)
        self.lines.append(line)
        if fact:
            self.facts.append({"t_s": round(time.monotonic() - self.started, 1), **fact})
        self.path.write_text("\n".join(self.lines) + "\n")
        self.path.with_suffix(".jsonl").write_text("".join(json.dumps(f) + "\n" for f in self.facts))


def stubs(address: str) -> tuple[transcription_pb2_grpc.TranscriptionServiceStub, fleet_pb2_grpc.FleetServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 2**28)])
    return transcription_pb2_grpc.TranscriptionServiceStub(channel), fleet_pb2_grpc.FleetServiceStub(channel)


def workers_of(address: str) -> list[fleet_pb2.Worker]:
    return list(stubs(address)[1].ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=10).workers)


def corpus(files: int) -> tuple[list[bytes], list[str], float]:
    """`files` recordings (the committed clips in turn), what each says, and their total seconds."""
    names = ["speech_paragraph.ogg", "speech_long.wav", "speech_short.wav"]
    audio = {n: decode_container(clip(n), max_seconds=60) for n in names}
    chosen = [names[i % len(names)] for i in range(files)]
    seconds = sum(audio[n].size for n in chosen) / SAMPLE_RATE
    return [wav_bytes(audio[n]) for n in chosen], [SAID[n] for n in chosen], seconds


def throughput(address: str, files: list[bytes]) -> tuple[float, list[str]]:
    """(wall seconds, transcripts) of every file sent at once."""
    stub = stubs(address)[0]
    started = time.perf_counter()
    with ThreadPoolExecutor(min(len(files), 256)) as pool:
        answers = list(pool.map(lambda f: stub.Transcribe(pb.TranscribeRequest(audio_content=f), timeout=600), files))
    return time.perf_counter() - started, [a.transcript for a in answers]


def nvidia_smi_mib() -> dict[int, int]:
    """Compute processes' used memory (MiB) by pid, as nvidia-smi reports it."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {int(pid): int(mib) for pid, mib in (line.split(",") for line in out.strip().splitlines() if line)}


def step_vram(report: Report, f: Fleet, device: str) -> None:
    workers = workers_of(f.address)
    smi = nvidia_smi_mib() if device == "cuda" else {}
    for w in workers:
        h = w.health
        ours = h.vram_process_bytes / 2**20 if h.HasField("vram_process_bytes") else None
        theirs = smi.get(w.supervisor_pid)
        agree = ours is not None and theirs is not None and abs(ours - theirs) <= 0.05 * theirs
        report.add(
            f"| {w.name} | {h.engine} | {h.gpu_name or '-'} | {h.gpu_uuid or '-'} | "
            f"{h.vram_total_bytes / 2**30:.1f} | {ours if ours is None else round(ours)} | {theirs} | "
            f"{'yes' if agree else 'NO' if device == 'cuda' else 'n/a (no GPU)'} |",
            step="vram",
            worker=w.name,
            gpu=h.gpu_name,
            uuid=h.gpu_uuid,
            nvml_mib=ours,
            smi_mib=theirs,
            agree=agree,
        )


def step_auto(report: Report, env: dict[str, str]) -> None:
    with (
        tempfile.TemporaryFile("w+") as out,
        fleet(workers=0, output=out, settings={**env, "GPU_SCALE_WORKERS": "auto"}) as f,
    ):
        out.seek(0)
        said = [line.strip() for line in out.read().splitlines() if "worker" in line.lower()]
        count = len(workers_of(f.address))
    report.add(
        f"- `scribe start` with GPU_SCALE_WORKERS=auto started **{count}** workers; it said:",
        step="auto",
        workers=count,
    )
    for line in said[:6]:
        report.add(f"  - `{line}`")


def step_throughput(
    report: Report, label: str, env: dict[str, str], workers: list[int], batches: list[int], files: int, real: bool
) -> None:
    data, said, seconds = corpus(files)

    def run(n: int, batch: int) -> float | None:
        if report.left() < 60:
            report.add(f"| {label} | {n} | {batch} | skipped: out of time | | |", step="throughput", skipped=True)
            return None
        extra = {"WORKER_BATCH_SIZE": str(batch), "WORKER_CONCURRENCY": str(min(64, max(8, 2 * batch)))}
        with fleet(workers=n, settings={**env, **extra}) as f:
            throughput(f.address, data[: max(2, n)])  # warm-up: first CUDA kernels, allocator
            wall, texts = throughput(f.address, data)
        rtf = seconds / wall
        error = f"{wer(said, texts):.2f}" if real else "n/a (random weights)"
        report.add(
            f"| {label} | {n} | {batch} | {rtf:.1f}x | {wall:.1f} | {error} |",
            step="throughput",
            model=label,
            workers=n,
            batch=batch,
            rtf=rtf,
            wall_s=wall,
            audio_s=seconds,
            wer=error,
        )
        return rtf

    sweep = {b: run(1, b) for b in batches}
    measured = {b: r for b, r in sweep.items() if r is not None}
    best = max(measured, key=lambda b: measured[b]) if measured else batches[-1]
    run(1, 1)
    for n in workers:
        if n > 1:
            run(n, 1)
            run(n, best)


def wait_status(address: str, serving: bool, timeout_s: float) -> fleet_pb2.Worker | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        w = workers_of(address)[0]
        if (w.routing_state == fleet_pb2.ROUTING_STATE_SERVING) == serving:
            return w
        time.sleep(0.5)
    return None


HOG = """
import sys, time, torch
free, _ = torch.cuda.mem_get_info()
keep = int(sys.argv[1]) * 2**20
blocks = [torch.empty(max(0, free - keep), dtype=torch.uint8, device="cuda")]
print("taken", flush=True)
time.sleep(float(sys.argv[2]))
"""


def step_guard(report: Report, env: dict[str, str], device: str) -> None:
    if device != "cuda":
        report.add(
            "- VRAM guard: skipped, no GPU (NVML has no free memory to watch on a CPU)", step="guard", skipped=True
        )
        return
    with fleet(workers=1, settings={**env, "MIN_FREE_VRAM_MB": "4096"}) as f:
        hog = subprocess.Popen([sys.executable, "-c", HOG, "1024", "30"], stdout=subprocess.PIPE, text=True)
        try:
            down = wait_status(f.address, serving=False, timeout_s=20)
            reason = (down.routing_reason or down.health.status_reason) if down else ""
            report.add(
                f"- with 1 GiB left free by another process: {'NOT_SERVING' if down else 'still SERVING (FAIL)'}"
                f" — `{reason}`",
                step="guard",
                down=bool(down),
            )
            try:
                stubs(f.address)[0].Transcribe(pb.TranscribeRequest(audio_content=clip("speech_short.wav")), timeout=5)
                report.add("  - a call meanwhile: answered (queued until the worker came back)")
            except grpc.RpcError as exc:
                report.add(f"  - a call meanwhile: {exc.code().name} ({exc.details()[:120]})")
        finally:
            hog.kill()
            hog.wait()
        up = wait_status(f.address, serving=True, timeout_s=30)
        answer = stubs(f.address)[0].Transcribe(
            pb.TranscribeRequest(audio_content=clip("speech_short.wav")), timeout=60
        )
        log = (
            (f.run_dir / "logs" / "supervisord.log").read_text()
            if (f.run_dir / "logs" / "supervisord.log").exists()
            else ""
        )
        crashes = CRASH.findall(log)
        report.add(
            f"- memory back: {'SERVING again' if up else 'not back (FAIL)'}, then transcribed {answer.transcript!r}; "
            f"crashed processes: {len(crashes)}",
            step="guard",
            recovered=bool(up),
            crashes=len(crashes),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting steps after this long")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--batches", default="16,32", help="batch sizes tried on one worker; the best is used on more")
    parser.add_argument("--files", type=int, default=96, help="recordings sent at once per measurement")
    parser.add_argument("--shape", default="large-v2", choices=sorted(synthetic.SHAPES))
    parser.add_argument("--tokens", type=int, default=100, help="tokens the synthetic model decodes per window")
    parser.add_argument("--out", type=Path, help="report (default bench/results/gpu.md, or gpu_rehearsal_cpu.md)")
    parser.add_argument(
        "--steps", default="vram,auto,guard,buckets,synthetic,tiny", help="which steps, run in this order"
    )
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / ("gpu.md" if args.device == "cuda" else "gpu_rehearsal_cpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = Report(out, time.monotonic(), args.budget_s)
    workers = [int(n) for n in args.workers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    env: dict[str, str] = {
        "WHISPER_ENGINE": "torch",
        "WHISPER_DEVICE": args.device,
        "HF_HUB_OFFLINE": "1",
        "GPU_SCALE_DEVICE_ID": "0",
    }
    if args.device == "cpu":
        env["WHISPER_CPU_THREADS"] = "1"
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (rehearsal)"
    report.add(f"# GPU check: torch engine on {name}\n", step="machine", device=name)
    report.add(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"CUDA {torch.version.cuda or '-'}; budget {args.budget_s:.0f} s; files per measurement {args.files}\n"
    )

    def vram() -> None:
        report.add("## Worker health vs nvidia-smi\n")
        report.add("| worker | engine | GPU | UUID | VRAM GiB | own MiB (NVML) | nvidia-smi MiB | within 5 % |")
        report.add("|---|---|---|---|---|---|---|---|")
        with fleet(workers=2, settings=env) as f:
            throughput(f.address, corpus(4)[0])  # the workers' memory after real decodes
            step_vram(report, f, args.device)

    def auto() -> None:
        report.add("\n## GPU_SCALE_WORKERS=auto\n")
        step_auto(report, {**env, "WORKER_MEMORY_MB": "16000" if args.device == "cuda" else "0"})

    header = ["\n## Aggregate real-time factor\n", "| model | workers | batch | x real time | wall s | WER % |"]
    header.append("|---|---|---|---|---|---|")

    def table() -> None:
        while header:  # once, before the first throughput row
            report.add(header.pop(0))

    def tiny() -> None:
        table()
        step_throughput(report, "tiny.en (embedded, real)", env, workers, batches, args.files, real=True)

    def synthetic_model() -> None:
        table()
        folder = Path(tempfile.mkdtemp(prefix="scribe-synthetic-")) / args.shape
        started = time.monotonic()
        dtype = "float16" if args.device == "cuda" else "float32"
        synthetic.build(folder, args.shape, args.tokens, dtype, args.device)
        report.add(f"| (synthetic {args.shape} written in {time.monotonic() - started:.0f} s) | | | | | |")
        label = f"{args.shape}-shaped SYNTHETIC, {args.tokens} tokens/window"
        step_throughput(report, label, {**env, "WHISPER_MODEL": str(folder)}, workers, batches, args.files, real=False)

    def guard() -> None:
        report.add("\n## VRAM guard\n")
        step_guard(report, env, args.device)

    def buckets() -> None:
        report.add("\n## Encoder input length (ENCODER_MIN_SECONDS buckets, torch engine in-process, tiny.en)\n")
        step_buckets(report.add, args.device, max(batches), report.left)

    known = {
        "vram": vram,
        "auto": auto,
        "tiny": tiny,
        "synthetic": synthetic_model,
        "guard": guard,
        "buckets": buckets,
    }
    for step in args.steps.split(","):
        fn = known[step]
        if report.left() < 30:
            report.add(f"- {step}: skipped, out of time", step=step, skipped=True)
            continue
        try:
            fn()
        except Exception as exc:  # one failed step must not lose the others' results
            report.add(f"- {step} FAILED: {type(exc).__name__}: {str(exc)[:300]}", step=step, error=str(exc))
    report.add(f"\nTotal {time.monotonic() - report.started:.0f} s.")


if __name__ == "__main__":
    main()
