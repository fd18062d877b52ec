"""`make soak`: live streams and unary calls for T minutes while a chaos loop kills, scales and restarts
workers; every call is checked, and so is the gateway (same pid, flat RSS and fds, empty queue at the end).

    python -m bench.soak --minutes 30            # issue 24's chaos: 3 streams at 2x, 2 clients, kill -9 every 12 s
    python -m bench.soak --minutes 2.5           # the same, short (SOAK_MINUTES=2.5 make soak)
    python -m bench.soak --actions all --interval 3 --streams 2 --pace 1   # kills, SIGTERM, scaling, group restarts

Every stream must give its undisturbed run's words exactly, and every call must succeed.

Traffic goes only to the loopback gateway of a throwaway fleet (bench/fleet.py). `run_soak` takes any
running fleet, so the short soak in tests/test_soak.py runs the same code on the tests' fleet.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scribe_client import ScribeClient
from scribe_client.gen import fleet_pb2

from bench.soak_chaos import ACTIONS, Chaos, Target, process_pid, supervisord_pid
from bench.soak_checks import (
    Sample,
    Sampler,
    difference,
    fd_problem,
    rss_problem,
    stream_problems,
    stream_words,
    unary_problems,
    words_of,
)
from bench.soak_load import Load, StreamRun, UnaryRun, stream_clips, stream_once, unary_clips, unary_once

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SoakReport:
    seconds: float
    streams: int
    clients: int
    workers: int
    pace: float
    stream_runs: list[StreamRun]
    unary_runs: list[UnaryRun]
    chaos: dict[str, int]
    start: Sample
    end: Sample
    queue_at_end: str
    problems: list[str] = field(default_factory=list)
    equal_streams: int = 0  # completed streams word for word equal to their undisturbed run
    lost_words: int = 0  # words of the undisturbed run a stream did not give
    # Unary calls whose words are not those of the file decoded alone. Not a failure of the soak: CPU
    # workers pack short files of several calls into one Whisper window (services/gpu_worker/batching/packing.py),
    # and a file's words then depend on what it was packed with. Counted and shown, not hidden.
    unary_other_words: list[str] = field(default_factory=list)

    @property
    def failed_calls(self) -> int:
        return sum(r.error is not None for r in self.unary_runs) + sum(r.error is not None for r in self.stream_runs)


def wait_serving(address: str, workers: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    with ScribeClient(address) as client:
        while time.monotonic() < deadline:
            listed = client.list_workers(timeout=5).workers
            if sum(w.routing_state == fleet_pb2.ROUTING_STATE_SERVING for w in listed) >= workers:
                return
            time.sleep(0.2)
    raise TimeoutError(f"fewer than {workers} workers serving after {timeout:.0f} s")


def idle_gateway(address: str, timeout: float = 30) -> str:
    """'' once nothing is queued or in flight on the gateway; else what is still there after `timeout`."""
    deadline = time.monotonic() + timeout
    with ScribeClient(address) as client:
        while True:
            answer = client.list_workers(timeout=5)
            stats = answer.stats
            in_flight = sum(w.in_flight for w in answer.workers)
            left = f"queued {stats.queued_requests}, streams {stats.active_streams}, in flight {in_flight}"
            if stats.queued_requests == 0 and stats.active_streams == 0 and in_flight == 0:
                return ""
            if time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def references(address: str) -> tuple[list[StreamRun], dict[str, UnaryRun]]:
    """Each clip once, alone on an undisturbed fleet: what every call under chaos must match. The streams
    are sent as fast as they go (a stream's finals depend on its audio alone, not on its pace): quicker,
    and the soak's paced streams must then match a run whose worker took the audio in large backlogs."""
    with ScribeClient(address) as client:
        streams = [stream_once(client, i, pcm, 0, f"soak-reference-{i}") for i, pcm in enumerate(stream_clips())]
        unary = {m: unary_once(client, m, audio, f"soak-reference-{m}") for m, audio in unary_clips().items()}
    broken = [r.error for r in streams if r.error] + [r.error for r in unary.values() if r.error]
    if broken or not all(stream_words(r) for r in streams):
        raise RuntimeError(f"the undisturbed reference runs failed: {broken}")
    return streams, unary


def run_soak(
    target: Target,
    seconds: float,
    streams: int,
    clients: int,
    workers: int,
    interval_s: float = 3.0,
    pace: float = 1.0,
    actions: tuple[str, ...] = ACTIONS,
) -> SoakReport:
    """Soak a running fleet of `workers` workers for `seconds`; the fleet has `workers` serving afterwards."""
    wait_serving(target.address, workers)
    stream_refs, unary_refs = references(target.address)
    pids = (supervisord_pid(target), process_pid(target, "gateway"))
    sampler = Sampler(pids[1])
    sampler.start()
    load = Load(target.address, streams, clients, pace)
    chaos = Chaos(target, base=workers, interval_s=interval_s, actions=actions)
    started = time.monotonic()
    load.start()
    chaos.start()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    chaos.stop()  # the fleet goes back to `workers` workers
    load.stop()  # each loop finishes the call it is in
    elapsed = time.monotonic() - started
    wait_serving(target.address, workers)
    queue = idle_gateway(target.address)
    sampler.stop()
    end = sampler.samples[-1]
    report = SoakReport(
        elapsed,
        streams,
        clients,
        workers,
        pace,
        load.stream_runs,
        load.unary_runs,
        dict(chaos.counts),
        sampler.samples[0],
        end,
        queue or "empty",
    )
    for run in load.stream_runs:
        reference = stream_refs[run.clip]
        report.problems += stream_problems(run, reference)
        diff = difference(stream_words(reference), stream_words(run))
        if run.error is not None:
            continue  # a failed call is counted as one; its words are not counted again
        report.lost_words += diff.lost
        report.equal_streams += diff.wer_points == 0
    for unary in load.unary_runs:
        report.problems += unary_problems(unary)
        if unary.error is None and words_of(unary.text) != words_of(unary_refs[unary.method].text):
            report.unary_other_words.append(f"{unary.request_id}: {unary.text!r}")
    if (supervisord_pid(target), process_pid(target, "gateway")) != pids:
        report.problems.append(
            f"supervisord or the gateway restarted: pids {pids} became "
            f"{(supervisord_pid(target), process_pid(target, 'gateway'))}"
        )
    if queue:
        report.problems.append(f"requests left at the end: {queue}")
    report.problems += [p for p in (rss_problem(sampler.samples), fd_problem(sampler.samples[0], end)) if p]
    report.problems += [f"chaos step failed: {e}" for e in chaos.errors]
    if not load.stream_runs or not load.unary_runs or not chaos.counts.get("kill9"):
        report.problems.append("the soak ran no streams, no unary calls or no kills: it tested nothing")
    return report


def table(report: SoakReport, note: str = "") -> str:
    mib = 2**20
    chaos = report.chaos
    streams_ok = sum(r.error is None for r in report.stream_runs)
    others = f"{len(report.unary_other_words)} of {len(report.unary_runs)}"
    rows = [
        ("duration", f"{report.seconds / 60:.1f} min"),
        ("fleet", f"{report.workers} workers (scaled to {report.workers + 1} and back), 1 CPU thread each"),
        (
            "load",
            f"{report.streams} live streams at {report.pace:g}x real time, {report.clients} unary clients in loops",
        ),
        ("unary calls (Transcribe / WithProgress)", str(len(report.unary_runs))),
        ("streams completed", f"{streams_ok} of {len(report.stream_runs)}"),
        (
            "chaos",
            f"{chaos.get('kill9', 0)} kill -9, {chaos.get('sigterm', 0)} SIGTERM, "
            f"{chaos.get('scale_up', 0)} scale up, {chaos.get('scale_down', 0)} scale down, "
            f"{chaos.get('restart_group', 0)} group restarts",
        ),
        ("failed calls", str(report.failed_calls)),
        ("lost words (streams: deleted or replaced vs the undisturbed run)", str(report.lost_words)),
        ("streams word for word equal to their undisturbed run", f"{report.equal_streams} of {streams_ok}"),
        ("unary calls with other words than the file decoded alone (packing, see below)", others),
        ("gateway RSS start → end", f"{report.start.rss / mib:.0f} → {report.end.rss / mib:.0f} MiB"),
        ("gateway open fds start → end", f"{report.start.fds} → {report.end.fds}"),
        ("queue at the end", report.queue_at_end),
        ("gateway and supervisord restarts", "0" if not any("restarted" in p for p in report.problems) else "yes"),
        ("problems", str(len(report.problems))),
    ]
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if note:
        lines += ["", note]
    if report.unary_other_words:
        lines += [
            "",
            "Unary calls with other words: CPU workers pack short files of several calls into one Whisper "
            "window, and a file's words then depend on its window-mates; the same happens without any kill. "
            "The words these calls got:",
            *(f"- {t}" for t in sorted({t.split(": ", 1)[1] for t in report.unary_other_words})[:5]),
        ]
    lines += [f"- PROBLEM: {p}" for p in report.problems[:50]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.fleet import fleet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--streams", type=int, default=3, help="live streams at once (N)")
    parser.add_argument("--clients", type=int, default=2, help="unary clients in loops (M)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=12.0, help="seconds between chaos actions")
    parser.add_argument("--pace", type=float, default=2.0, help="stream speed, times real time (>= 1)")
    parser.add_argument(
        "--actions",
        default="kill9",
        help=f"chaos actions in turn, comma-separated, or 'all' for the operator's bad day ({','.join(ACTIONS)})",
    )
    parser.add_argument("--note", default="", help="a line under the table, e.g. what else loaded the machine")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "scribe-soak-logs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.md")
    args = parser.parse_args(argv)
    with fleet(workers=args.workers, threads=1, HEALTH_INTERVAL_S="0.25") as target:
        actions = ACTIONS if args.actions == "all" else tuple(args.actions.split(","))
        report = run_soak(
            target, args.minutes * 60, args.streams, args.clients, args.workers, args.interval, args.pace, actions
        )
        if report.problems:  # the fleet's folder goes with it: keep its logs to find the cause
            shutil.copytree(target.run_dir / "logs", args.logs, dirs_exist_ok=True)
            print(f"logs kept in {args.logs}", file=sys.stderr)
    text = table(report, args.note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Soak under chaos\n\n" + text)
    print(text)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
