"""`scribe batch DIR_OR_FILES --out DIR --format srt`: every file as a batch job, one progress bar, each
result written as soon as its job ends, and nothing done twice when it is run again.

Each file gets a job whose request id is made from the file (path, size, modification time) and the
options, and the job id is kept in DIR/.scribe-batch.json as soon as the job exists. Run again, the
command skips files whose output is already written, follows jobs it submitted before (still queued or
running, or finished while it was away) instead of submitting them again, and the request id makes even
a submit whose answer was lost return the job already made. A gateway that restarts mid-batch is waited
for: uploads are retried and the jobs it was running resume on the server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scribe_client import ScribeClient, TranscribeOptions
from scribe_client.cli.jobs import add_options, job_options, labels_of
from scribe_client.cli.transcribe import AUDIO_SUFFIXES, describe_error
from scribe_client.gen import jobs_pb2 as jpb
from scribe_client.jobs import FORMATS

STATE_FILE = ".scribe-batch.json"
LABEL = "scribe-batch"
POLL_S = 1.0
#: Jobs looked up one by one per poll when the batch's listing does not show them.
MAX_GETS = 50


@dataclass
class Item:
    source: Path
    destination: Path
    key: str
    job_id: str | None = None
    audio_s: float = 0.0
    done: bool = False
    skipped: bool = False
    error: str | None = None


def request_key(source: Path, fmt: str, options: TranscribeOptions, batch: str) -> str:
    """The same file, unchanged, with the same options, into the same --out: the same key (and so the
    same job). A batch into another folder is another batch, with jobs of its own."""
    stat = source.stat()
    what = [str(source.resolve()), stat.st_size, stat.st_mtime_ns, fmt, repr(options), batch]
    return "batch-" + hashlib.sha256(json.dumps(what).encode()).hexdigest()[:40]


def plan(paths: list[str], out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: a folder's files keep their place under it, inside OUT."""
    pairs: list[tuple[Path, Path]] = []
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            for source in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
                pairs.append((source, out / source.relative_to(root).with_suffix(f".{fmt}")))
        else:
            pairs.append((root, out / root.with_suffix(f".{fmt}").name))
    taken: dict[Path, int] = {}
    unique = []
    for source, destination in pairs:  # a.wav and a.mp3 side by side keep their extension
        taken[destination] = taken.get(destination, 0) + 1
        unique.append(
            (source, destination.with_name(f"{source.name}.{fmt}") if taken[destination] > 1 else destination)
        )
    return unique


class State:
    """DIR/.scribe-batch.json: the job of every file submitted, written after every change."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE_FILE
        self._lock = threading.Lock()
        try:
            self.jobs: dict[str, dict[str, str]] = json.loads(self.path.read_text()).get("jobs", {})
        except (OSError, ValueError):
            self.jobs = {}

    def remember(self, item: Item) -> None:
        with self._lock:
            self.jobs[str(item.source.resolve())] = {"job": item.job_id or "", "key": item.key}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"version": 1, "jobs": self.jobs}, indent=1))
            os.replace(tmp, self.path)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Batch:
    def __init__(self, client: ScribeClient, args: argparse.Namespace, err: Console) -> None:
        self.client = client
        self.fmt = args.format
        self.options = job_options(args, [args.format])
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.labels = {
            **labels_of(args.label),
            LABEL: hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:16],
        }
        self.state = State(self.out)
        self.err = err
        self.uploads = max(1, args.uploads)
        self.items: list[Item] = []
        self.started = time.monotonic()

    def prepare(self, paths: list[str]) -> None:
        for source, destination in plan(paths, self.out, self.fmt):
            item = Item(source, destination, request_key(source, self.fmt, self.options, self.labels[LABEL]))
            known = self.state.jobs.get(str(source.resolve()))
            if destination.exists():
                item.done = item.skipped = True
            elif known and known.get("key") == item.key and known.get("job"):
                item.job_id = known["job"]
            self.items.append(item)

    def submit(self, item: Item) -> None:
        job = self.client.jobs.submit(
            item.source, self.options, labels=self.labels, display_name=item.source.name, request_id=item.key
        )
        item.job_id = job.id
        item.audio_s = job.audio_duration.ToNanoseconds() / 1e9
        self.state.remember(item)

    def poll(self) -> None:
        """Every job of this batch, one list call per page; write the results of those that succeeded."""
        jobs = {j.id: j for j in self.client.jobs.list(labels={LABEL: self.labels[LABEL]}, page_size=1000)}
        unlisted = [i for i in self.items if not i.done and i.job_id is not None and i.job_id not in jobs]
        for item in unlisted[:MAX_GETS]:  # a job of an older version of this command, without our label
            try:
                assert item.job_id is not None
                jobs[item.job_id] = self.client.jobs.get(item.job_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                item.done, item.error = True, "its job was deleted before it finished: run the batch again"
        for item in self.items:
            if item.done or item.job_id is None:
                continue
            job = jobs.get(item.job_id)
            if job is None:
                continue
            item.audio_s = job.audio_duration.ToNanoseconds() / 1e9
            if job.state == jpb.JOB_STATE_SUCCEEDED:
                answer = self.client.jobs.result(job.id, self.fmt)
                write_atomically(item.destination, answer.content)
                item.done = True
                if not self.err.is_terminal:
                    print(f"{item.source} -> {item.destination}", file=sys.stderr)
            elif job.state in (jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED):
                state = jpb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
                item.done, item.error = True, f"{state}: {job.error.message}" if job.error.message else state

    def missing(self) -> list[Item]:
        """Jobs of an earlier run that no longer exist (deleted, or expired before their result was written)."""
        gone = []
        for item in self.items:
            if item.done or item.job_id is None:
                continue
            try:
                self.client.jobs.get(item.job_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    gone.append(item)
        return gone

    def run(self) -> int:
        for item in self.missing():
            item.job_id, item.key = None, item.key + "-again"
        pending = [item for item in self.items if not item.done and item.job_id is None]
        with (
            Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                TextColumn("{task.fields[files]}"),
                TextColumn("{task.fields[hours]}"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=self.err,
                disable=not self.err.is_terminal,
            ) as progress,
            ThreadPoolExecutor(self.uploads, thread_name_prefix="upload") as pool,
        ):
            task = progress.add_task("batch", total=None, files="", hours="")
            uploads: dict[Future[None], Item] = {pool.submit(self.submit, item): item for item in pending}
            while True:
                for future in [f for f in uploads if f.done()]:
                    item = uploads.pop(future)
                    if future.exception() is not None:
                        item.done, item.error = True, f"not submitted: {describe_error(future.exception())}"  # type: ignore[arg-type]
                try:
                    self.poll()
                except grpc.RpcError as exc:  # the gateway is restarting: the jobs go on, look again soon
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                self.show(progress, task)
                if all(item.done for item in self.items) and not uploads:
                    break
                time.sleep(POLL_S)
        return self.summary()

    def show(self, progress: Progress, task: object) -> None:
        done = [i for i in self.items if i.done and not i.error]
        total_s = sum(i.audio_s for i in self.items if not i.skipped)
        done_s = sum(i.audio_s for i in done if not i.skipped)
        progress.update(
            task,  # type: ignore[arg-type]
            total=max(total_s, 1e-3),
            completed=done_s,
            files=f"{len(done)}/{len(self.items)} files",
            hours=f"{done_s / 3600:.2f}/{total_s / 3600:.2f} h of audio",
        )

    def summary(self) -> int:
        written = sum(1 for i in self.items if i.done and not i.error and not i.skipped)
        skipped = sum(1 for i in self.items if i.skipped)
        failed = [i for i in self.items if i.error]
        audio_s = sum(i.audio_s for i in self.items if i.done and not i.error and not i.skipped)
        took = time.monotonic() - self.started
        speed = f" ({audio_s / took:.1f}x real time)" if audio_s and took else ""
        print(
            f"scribe: batch of {len(self.items)} files: {written} written, {skipped} already done, {len(failed)} failed;"
            f" {audio_s / 3600:.3f} h of audio in {took:.1f} s{speed}",
            file=sys.stderr,
        )
        for item in failed:
            print(f"scribe: FAILED {item.source}: {item.error}", file=sys.stderr)
        return 1 if failed else 0


def run_batch(client: ScribeClient, args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    batch = Batch(client, args, err)
    batch.prepare(args.paths)
    if not batch.items:
        print(f"scribe: no audio files in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    try:
        return batch.run()
    except grpc.RpcError as exc:
        print(f"scribe: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def add_batch_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], security: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    batch = sub.add_parser(
        "batch",
        parents=[security],
        help="transcribe many files as batch jobs; run it again to pick up where it stopped",
        description="Submits every file as a job, shows one progress bar, writes each transcript into --out as "
        "its job ends, and skips what is done when run again.",
    )
    batch.add_argument("paths", nargs="+", metavar="DIR_OR_FILE")
    batch.add_argument("--out", required=True, help="folder for the transcripts (and .scribe-batch.json)")
    batch.add_argument("--format", choices=sorted(set(FORMATS) - {"text"}), default="txt", help="default txt")
    batch.add_argument("--uploads", type=int, default=4, help="files uploaded at once (default 4)")
    batch.add_argument("--address", help="gateway address (default GATEWAY_ADDRESS)")
    add_options(batch)
    return batch
