"""`scribe jobs`: batch jobs one at a time (submit, list, get, watch, cancel, delete, results).

    scribe jobs submit talk.mp3 --format srt --label project=q3 [--webhook URL] [--wait]
    scribe jobs submit --path /srv/audio/talk.mp3        # a file on the gateway's host (JOB_SOURCE_DIRS)
    scribe jobs list [--state running] [--label project=q3]
    scribe jobs watch JOB_ID                             # progress until it ends; exit 0 when it succeeded
    scribe jobs results JOB_ID --format srt [--output talk.srt]

Many files at once, with one progress bar and resumption: `scribe batch` (scribe_client.cli.batch).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import json_format

from scribe_client import ScribeClient, TranscribeOptions
from scribe_client.gen import jobs_pb2 as jpb
from scribe_client.jobs import FORMATS, STATES, state_name

#: The states a job ends in, and the exit status `watch` gives for each.
EXIT = {jpb.JOB_STATE_SUCCEEDED: 0, jpb.JOB_STATE_FAILED: 1, jpb.JOB_STATE_CANCELLED: 1}


def labels_of(values: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label takes KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def job_options(args: argparse.Namespace, formats: list[str]) -> TranscribeOptions:
    return TranscribeOptions(
        language=args.language,
        model=args.model,
        beam_size=args.beam_size,
        # JSON is the format with words; the others have no place for them.
        word_timestamps=args.words or "json" in formats,
        initial_prompt=args.prompt,
    )


def _seconds(d: object) -> float:
    return float(d.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]


def _when(ts: object) -> str:
    seconds = ts.seconds  # type: ignore[attr-defined]
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"


def job_line(job: jpb.Job) -> str:
    """One line of a job's state, for watch and submit."""
    audio = _seconds(job.audio_duration)
    pieces = f"{job.pieces_done}/{job.pieces_total or '?'} pieces" if job.pieces_total != 1 else ""
    error = f"  {job.error.message}" if job.error.message else ""
    return (
        f"{job.id}  {state_name(job.state):9}  {job.progress_percent:5.1f}%  {audio:8.1f} s  {pieces}{error}".rstrip()
    )


def job_table(jobs: list[jpb.Job]) -> str:
    rows = [["ID", "STATE", "PROGRESS", "AUDIO S", "CREATED (UTC)", "NAME", "LABELS"]]
    for j in jobs:
        labels = ",".join(f"{k}={v}" for k, v in sorted(j.spec.labels.items()))
        rows.append(
            [
                j.id,
                state_name(j.state),
                f"{j.progress_percent:.1f}%",
                f"{_seconds(j.audio_duration):.1f}",
                _when(j.create_time),
                j.spec.display_name or j.spec.path or j.spec.url or "-",
                labels or "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def submit(client: ScribeClient, args: argparse.Namespace) -> int:
    sources: list[tuple[Path | None, dict[str, str]]] = []
    if args.path or args.url:
        if args.files:
            print("scribe: give files to upload, or --path / --url, not both", file=sys.stderr)
            return 2
        sources.append((None, {"path": args.path} if args.path else {"url": args.url}))
    else:
        if not args.files:
            print("scribe: jobs submit needs files, --path or --url", file=sys.stderr)
            return 2
        sources += [(Path(f), {}) for f in args.files]
    labels = labels_of(args.label)
    made = []
    for file, source in sources:
        job = client.jobs.submit(
            file,
            job_options(args, args.format or []),
            formats=args.format or [],
            labels=labels,
            webhook_url=args.webhook,
            display_name=file.name if file else "",
            **source,  # type: ignore[arg-type]
        )
        made.append(job)
        print(job.id)
    status = 0
    if args.wait:
        for job in made:
            final = client.jobs.wait(job.id)
            print(job_line(final), file=sys.stderr)
            status = max(status, EXIT.get(final.state, 1))
    return status


def watch(client: ScribeClient, args: argparse.Namespace) -> int:
    last = None
    for job in client.jobs.watch(args.job_id):
        last = job
        print(job_line(job), flush=True)
    if last is None:
        return 1
    return EXIT.get(last.state, 1)


def results(client: ScribeClient, args: argparse.Namespace) -> int:
    answer = client.jobs.result(args.job_id, args.format)
    if args.output and args.output != "-":
        Path(args.output).write_text(answer.content, encoding="utf-8")
        print(f"{args.job_id} -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(answer.content)
    return 0


def run_jobs(client: ScribeClient, args: argparse.Namespace) -> int:
    """The `jobs` subcommand named in args.jobs_command."""
    try:
        if args.jobs_command == "submit":
            return submit(client, args)
        if args.jobs_command == "list":
            states = args.state or []
            found = []
            for job in client.jobs.list(states, labels_of(args.label), page_size=min(args.limit, 1000)):
                found.append(job)
                if len(found) >= args.limit:
                    break
            print(job_table(found))
            return 0
        if args.jobs_command == "get":
            job = client.jobs.get(args.job_id)
            print(json_format.MessageToJson(job) if args.json else job_line(job))
            return 0
        if args.jobs_command == "watch":
            return watch(client, args)
        if args.jobs_command == "cancel":
            for job_id in args.job_ids:
                print(job_line(client.jobs.cancel(job_id)))
            return 0
        if args.jobs_command == "delete":
            for job_id in args.job_ids:
                client.jobs.delete(job_id)
                print(f"{job_id} deleted")
            return 0
        return results(client, args)
    except grpc.RpcError as exc:
        print(f"scribe: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"scribe: {exc}", file=sys.stderr)
        return 2


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--language", help="language code (default: detect)")
    parser.add_argument("--model", help="model to decode with, e.g. tiny.en or base (default: the fleet's default)")
    parser.add_argument("--beam-size", type=int, default=0)
    parser.add_argument("--words", action="store_true", help="ask for word time offsets")
    parser.add_argument("--prompt", help="initial prompt")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE", help="a label (repeatable)")


def add_jobs_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], security: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    jobs = sub.add_parser("jobs", help="batch jobs: submit, list, get, watch, cancel, delete, results")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    common = argparse.ArgumentParser(add_help=False, parents=[security])
    common.add_argument("--address", help="gateway address (default GATEWAY_ADDRESS)")

    sp = jobs_sub.add_parser("submit", parents=[common], help="create a job per file (uploaded), or from --path/--url")
    sp.add_argument("files", nargs="*", metavar="FILE")
    sp.add_argument("--path", help="a file on the gateway's host, under its JOB_SOURCE_DIRS")
    sp.add_argument("--url", help="an http(s) URL the gateway fetches (needs JOB_ALLOW_URLS)")
    sp.add_argument("--format", action="append", choices=sorted(FORMATS), help="format for the webhook (repeatable)")
    sp.add_argument("--webhook", help="URL to POST to when the job ends (signed, Standard Webhooks)")
    sp.add_argument("--wait", action="store_true", help="wait until every job has ended")
    add_options(sp)

    ls = jobs_sub.add_parser("list", parents=[common], help="jobs, newest first")
    ls.add_argument("--state", action="append", choices=sorted(STATES), help="only this state (repeatable)")
    ls.add_argument("--label", action="append", metavar="KEY=VALUE", help="only jobs with this label (repeatable)")
    ls.add_argument("--limit", type=int, default=50, help="most jobs to show (default 50)")

    get = jobs_sub.add_parser("get", parents=[common], help="one job's state")
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true", help="the whole job as JSON")

    w = jobs_sub.add_parser("watch", parents=[common], help="follow a job until it ends (exit 0 if it succeeded)")
    w.add_argument("job_id")

    for name, text in (("cancel", "cancel jobs"), ("delete", "delete jobs, their audio and results")):
        p = jobs_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("job_ids", nargs="+", metavar="JOB_ID")

    r = jobs_sub.add_parser("results", parents=[common], help="a finished job's transcript")
    r.add_argument("job_id")
    r.add_argument("--format", choices=sorted(FORMATS), default="txt", help="txt (default), srt, vtt, json, tsv")
    r.add_argument("--output", help="file to write (default: stdout)")
    return jobs
