"""`scribe transcribe`: one file with a progress bar, or many files and folders in parallel.

One file: the transcript goes to stdout (plain text), or, with --format, to FILE.<format> beside it
(--output PATH writes elsewhere, --output - to stdout). It is sent with TranscribeWithProgress, or with
TranscribeUpload when it is too large for one message, so a terminal shows a bar by audio seconds while
the segments come in; a long file is split over every serving worker either way.

Several files or a folder (searched recursively for audio files): --jobs calls run at once, each
transcript goes beside its file (or into --output DIR), and a bar shows files done, hours of audio
done and the aggregate real-time factor. A file that fails is reported at the end and the exit
status is 1; the others are still transcribed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from scribe_client import ScribeClient, TranscribeOptions, render
from scribe_client.errors import error_reason
from scribe_client.formats import speaker_name
from scribe_client.gen import transcription_pb2 as pb

#: Extensions a folder is searched for (what FFmpeg decodes and people record in).
AUDIO_SUFFIXES = frozenset(
    [
        ".wav",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".aac",
        ".wma",
        ".webm",
        ".mp4",
        ".mkv",
        ".mov",
        ".aiff",
        ".aif",
        ".amr",
    ]
)


def find_audio(paths: Iterable[str]) -> list[Path]:
    """Files as given, and every audio file under each folder, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            found.append(path)
    return found


def output_path(source: Path, fmt: str, output: str | None, keep_suffix: bool = False) -> Path:
    """FILE.<fmt> beside the source, or in the folder --output names (FILE.wav.<fmt> with keep_suffix)."""
    name = f"{source.name}.{fmt}" if keep_suffix else source.with_suffix(f".{fmt}").name
    return (Path(output) if output else source.parent) / name


def output_paths(sources: list[Path], fmt: str, output: str | None) -> dict[Path, Path]:
    """Destinations of a batch; sources that would share one (a.wav and a.mp3) keep their extension."""
    plain = [output_path(s, fmt, output) for s in sources]
    clash = {p for p in plain if plain.count(p) > 1}
    return {s: output_path(s, fmt, output, keep_suffix=p in clash) for s, p in zip(sources, plain, strict=True)}


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        reason = error_reason(exc.trailing_metadata())
        code = exc.code().name
        return f"{code}{f' {reason}' if reason else ''}: {exc.details()}"
    if isinstance(exc, OSError):
        return f"{exc.__class__.__name__}: {exc.strerror or exc}"
    return f"{exc.__class__.__name__}: {exc}"


def seconds(d: object) -> float:
    return float(d.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]


def summary(response: pb.TranscribeResponse) -> str:
    audio, took = seconds(response.audio_duration), seconds(response.processing_time)
    return f"{response.worker_id}: {audio:.1f} s of audio in {took:.2f} s ({response.language_code})"


def write(text: str, destination: Path | None, out: TextIO) -> None:
    if destination is None:
        out.write(text)
        out.flush()
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")


def print_segment_lines(segments: Iterable[pb.Segment]) -> None:
    for s in segments:
        who = f" {speaker_name(s.speaker_label)}:" if s.speaker_label else ""
        print(f"[{seconds(s.start_offset):8.2f} -> {seconds(s.end_offset):8.2f}]{who} {s.text.strip()}", flush=True)


def transcribe_one(
    client: ScribeClient,
    source: Path,
    options: TranscribeOptions,
    fmt: str,
    destination: Path | None,
    print_segments: bool,
    timeout: float,
    err: Console,
) -> int:
    """One file through TranscribeWithProgress (or TranscribeUpload), with a bar by audio seconds on a terminal."""
    result: pb.TranscribeResponse | None = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[audio]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[latest]}", style="dim"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task(source.name, total=None, audio="", latest="decoding the audio")
        for report in client.transcribe_with_progress(source, options, timeout=timeout):
            latest = report.segments[-1].text.strip() if report.segments else ""
            done, total = seconds(report.processed_audio), seconds(report.audio_duration)
            progress.update(
                task,
                total=max(total, 0.001),
                completed=done,
                audio=f"{done:.0f}/{total:.0f} s of audio",
                latest=latest[:60] if latest else "transcribing",
            )
            # With speaker labels, segments are labelled in the last report only: printed from it.
            if print_segments and not options.wants_speakers:
                print_segment_lines(report.segments)
            if report.HasField("result"):
                result = report.result
    if result is None:
        raise RuntimeError("the server ended TranscribeWithProgress without a result")
    if print_segments and options.wants_speakers:
        print_segment_lines(result.segments)
    if not print_segments:
        write(render(result, fmt), destination, sys.stdout)
    where = f" -> {destination}" if destination else ""
    print(f"{summary(result)}{where}", file=sys.stderr)
    return 0


@dataclass
class BatchTally:
    """What the batch bar shows; RTF is wall-clock time over audio time (below 1 is faster than real time)."""

    started: float = field(default_factory=time.monotonic)
    done: int = 0
    audio_s: float = 0.0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, response: pb.TranscribeResponse) -> None:
        self.done += 1
        self.audio_s += seconds(response.audio_duration)

    @property
    def rtf(self) -> float:
        return (time.monotonic() - self.started) / self.audio_s if self.audio_s else 0.0

    def audio(self) -> str:
        return f"{self.audio_s / 3600:.3f} h of audio"

    def speed(self) -> str:
        speed = f"RTF {self.rtf:.3f} ({1 / self.rtf:.1f}x real time)" if self.rtf else "RTF -"
        return speed + (f", {len(self.failed)} failed" if self.failed else "")


def transcribe_batch(
    client: ScribeClient,
    sources: list[Path],
    options: TranscribeOptions,
    fmt: str,
    output: str | None,
    jobs: int,
    timeout: float,
    err: Console,
) -> int:
    tally = BatchTally()
    destinations = output_paths(sources, fmt, output)

    def one(source: Path) -> tuple[pb.TranscribeResponse, Path]:
        response = client.transcribe(source, options, timeout=timeout)
        destination = destinations[source]
        write(render(response, fmt), destination, sys.stdout)
        return response, destination

    with (
        Progress(
            TextColumn("[bold]transcribing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TextColumn("{task.fields[audio]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not err.is_terminal,
        ) as progress,
        ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="transcribe") as pool,
    ):
        task = progress.add_task("batch", total=len(sources), audio=tally.audio(), speed=tally.speed())
        futures = {pool.submit(one, source): source for source in sources}
        for future in as_completed(futures):
            source = futures[future]
            try:
                response, destination = future.result()
                tally.add(response)
                if not err.is_terminal:
                    print(f"{source} -> {destination} ({summary(response)})", file=sys.stderr)
            except Exception as exc:  # one bad file must not stop the batch: it is reported below
                tally.failed.append((source, describe_error(exc)))
            progress.update(task, advance=1, audio=tally.audio(), speed=tally.speed())
    print(
        f"scribe: {tally.done} of {len(sources)} files transcribed, {tally.audio()}, {tally.speed()}",
        file=sys.stderr,
    )
    for source, why in sorted(tally.failed):
        print(f"scribe: FAILED {source}: {why}", file=sys.stderr)
    return 1 if tally.failed else 0
