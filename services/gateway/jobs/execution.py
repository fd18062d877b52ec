"""One run of one job: its pieces through the fleet queue at batch priority, each finished piece stored.

A short recording (no longer than a piece, small enough for one message) goes to a worker whole, as
uploaded, exactly as a Transcribe of the file would. The options go to the workers whole (RecognitionOptions),
so every option of Transcribe works in a job; speaker labels are clustered over all pieces at the end. A longer one is decoded here a piece at a time,
cut at silences (services.gateway.recordings.pieces) every JOB_PIECE_SECONDS as fixed at the job's first run,
so a resumed run cuts the same pieces: those already stored are skipped, never sent to a worker again.
Every store write is conditional on this gateway still holding the job; a refused write (the job was
cancelled, deleted or taken over) ends the run quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from google.rpc import status_pb2
from grpc_status import rpc_status

from services.common import audio
from services.common.audio import SAMPLE_RATE
from services.common.config import Settings
from services.common.errors import RequestError, error_reason
from services.common.rpclog import BATCH_PRIORITY, PRIORITY_HEADER, REQUEST_ID_HEADER
from services.gateway.jobs import netguard, requests
from services.gateway.jobs.fairness import FairSlots
from services.gateway.jobs.model import JobRecord, PieceRecord, error_status, status_of
from services.gateway.jobs.spool import JobSpool, fetch
from services.gateway.jobs.store import JobStore
from services.gateway.recordings import shard
from services.gateway.recordings.pieces import SEARCH_S, AudioPiece, Source, iter_pieces
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.speakers.diarize import RecordingSpeakers
from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()

#: Pieces of one job decoded or on workers at once (each holds its audio until it is done).
LOOKAHEAD = 2
#: Workers one piece tries before its job fails with the last one's UNAVAILABLE.
MAX_TRIES = 10
#: Runs a job may start: one that keeps ending with its gateway (a file that crashes it) is failed instead.
#: (A claim a gateway gives back unstarted when it stops cleanly is not a run; one killed before its job
#: reached a worker is, hence the margin.)
MAX_RUNS = 10
#: Largest file sent to a worker whole (its bytes are held in memory while it is on the worker).
WHOLE_MAX_BYTES = 32 * 2**20


class LostClaim(Exception):
    """The job is no longer this gateway's: cancelled, deleted, or taken over after a lost lease."""


@dataclass
class JobCounters:
    """What this gateway's runs did, for Prometheus and JobStats."""

    pieces: int = 0
    piece_seconds: float = 0.0  # audio sent to workers, every attempt counted (a retry is counted again)
    jobs_finished: int = 0
    in_flight: int = 0


@dataclass
class JobContext:
    """What every run of this gateway shares."""

    store: JobStore
    dispatcher: Dispatcher
    models: FleetModels
    settings: Settings
    gateway_id: str
    spool: JobSpool
    slots: FairSlots
    changed: Callable[[str], None]
    counters: JobCounters = field(default_factory=JobCounters)


def piece_seconds(settings: Settings) -> float:
    """JOB_PIECE_SECONDS, or less so that a piece (with the cut's search margin) fits in one message."""
    fits = 0.9 * settings.max_message_bytes / (2 * SAMPLE_RATE) - SEARCH_S
    return min(settings.job_piece_seconds, fits)


def plan(path: str, spec: jpb.JobSpec, piece_s: float, max_message_bytes: int) -> tuple[bool, float]:
    """(whether the file goes to a worker whole, its declared length in seconds or 0); blocking."""
    source = _source(path, spec)
    try:
        declared = source.declared_seconds()
    except audio.AudioError:
        declared = 0.0
    size = Path(path).stat().st_size
    whole = 0 < declared <= piece_s and size <= min(WHOLE_MAX_BYTES, int(0.9 * max_message_bytes))
    return whole, declared


def _source(path: str, spec: jpb.JobSpec) -> Source:
    return Source(path, spec.encoding, spec.sample_rate_hertz, spec.audio_channel_count)


def rpc_error_status(exc: grpc.aio.AioRpcError) -> bytes:
    """A worker's error as the job's google.rpc.Status, its ErrorInfo included."""
    status = rpc_status.from_call(exc)
    if status is not None:
        return status.SerializeToString()
    reason = error_reason(exc.trailing_metadata()) or "WORKER_ERROR"
    return error_status(exc.code(), reason, exc.details() or exc.code().name)


class JobRun:
    def __init__(self, ctx: JobContext, job: JobRecord) -> None:
        self.ctx = ctx
        self.job = job
        self._started = time.monotonic()
        self._done_s = 0.0
        self._done_pieces = 0
        self.reached_worker = False  # whether a piece of this run went to a worker (a run, for MAX_RUNS)

    async def run(self) -> None:
        job, ctx = self.job, self.ctx
        structlog.contextvars.bind_contextvars(job_id=job.id)
        try:
            await self._run()
            ctx.counters.jobs_finished += 1
        except Exception as exc:  # a piece's error comes out of the task group wrapped
            await self._failed(_first(exc))
        finally:
            ctx.changed(job.id)
            structlog.contextvars.unbind_contextvars("job_id")

    async def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, LostClaim):
            log.info("job_run_stopped", reason=str(exc) or "no longer held")
            return
        if isinstance(exc, RequestError):
            error = status_of(exc)
        elif isinstance(exc, audio.AudioError):
            code = grpc.StatusCode.OUT_OF_RANGE if exc.reason == "AUDIO_TOO_LONG" else grpc.StatusCode.INVALID_ARGUMENT
            error = error_status(code, exc.reason, exc.message)
        elif isinstance(exc, grpc.aio.AioRpcError):
            error = rpc_error_status(exc)
        elif isinstance(exc, OSError):
            error = error_status(
                grpc.StatusCode.NOT_FOUND, "SOURCE_UNREADABLE", f"the job's audio cannot be read: {exc}"
            )
        else:
            log.exception("job_run_crashed", exc_info=exc)
            error = error_status(grpc.StatusCode.INTERNAL, "JOB_RUN_FAILED", f"{type(exc).__name__}: {exc}")
        status = status_pb2.Status.FromString(error)
        log.warning("job_failed", code=_code_name(status.code), message=status.message)
        await self._store(self.ctx.store.fail, error)

    async def _store(self, method: Callable[..., bool], *args: object, **kwargs: object) -> None:
        """A conditional write for this run; LostClaim when the job is no longer ours."""
        held = await self.ctx.store.run(method, self.job.id, self.ctx.gateway_id, *args, **kwargs)
        self.ctx.changed(self.job.id)
        if not held:
            raise LostClaim()

    async def _run(self) -> None:
        job, ctx = self.job, self.ctx
        if job.runs > MAX_RUNS:
            raise RequestError(
                grpc.StatusCode.ABORTED,
                "JOB_RESTARTED_TOO_OFTEN",
                f"the job was started {job.runs - 1} times and its gateway stopped each time before it finished",
            )
        path = await self._audio()
        if job.piece_s is None:
            piece_s = piece_seconds(ctx.settings)
            whole, declared = await asyncio.to_thread(plan, path, job.spec, piece_s, ctx.settings.max_message_bytes)
            job.piece_s, job.whole_file, job.audio_s = piece_s, whole, declared or job.audio_s
            await self._store(ctx.store.update_run, piece_s=piece_s, whole_file=whole, audio_s=job.audio_s)
        log.info(
            "job_run_started", run=job.runs, whole=job.whole_file, piece_s=job.piece_s, audio_s=round(job.audio_s, 2)
        )
        if job.whole_file:
            await self._whole(path)
        else:
            await self._pieces(path)

    async def _audio(self) -> str:
        """The file to decode: the source path, the spooled upload, or the URL fetched into the spool now."""
        job, ctx = self.job, self.ctx
        source = job.spec.WhichOneof("source")
        if source == "path":
            return str(requests.source_path(job.spec.path, ctx.settings))
        if job.audio_path and Path(job.audio_path).is_file():
            return job.audio_path
        if source != "url":
            raise RequestError(
                grpc.StatusCode.DATA_LOSS, "AUDIO_LOST", f"the job's spooled audio {job.audio_path} is gone"
            )
        allowed = netguard.allowed_networks(ctx.settings.job_allow_networks)
        path, size = await fetch(job.spec.url, ctx.spool, job.id, ctx.settings.max_upload_bytes, allowed)
        ctx.spool.stored(size)
        job.audio_path, job.audio_bytes = str(path), size
        await self._store(ctx.store.update_run, audio_path=str(path), audio_bytes=size)
        return str(path)

    # --- a short file, whole ---------------------------------------------------------------------

    async def _whole(self, path: str) -> None:
        spec = self.job.spec

        async def request() -> pb.TranscribeRequest:
            data = await asyncio.to_thread(Path(path).read_bytes)
            return pb.TranscribeRequest(
                audio_content=data,
                encoding=spec.encoding,
                sample_rate_hertz=spec.sample_rate_hertz,
                audio_channel_count=spec.audio_channel_count,
                options=spec.options,
            )

        response = await self._on_worker(request, self.job.audio_s)
        seconds = response.audio_duration.ToNanoseconds() / 1e9
        piece = PieceRecord(0, 0.0, seconds, response.SerializeToString())
        await self._finish([piece], seconds, last=piece)

    # --- a long file, piece by piece -------------------------------------------------------------

    async def _pieces(self, path: str) -> None:
        job, ctx = self.job, self.ctx
        stored = {p.index: p for p in await ctx.store.run(ctx.store.pieces, job.id)}
        finished: dict[int, PieceRecord] = {}
        room = asyncio.Semaphore(LOOKAHEAD)
        assert job.piece_s is not None
        pieces = iter_pieces(
            _source(path, job.spec), job.piece_s, ctx.settings.max_audio_seconds, ctx.settings.max_decode_ratio
        )
        total_s = 0.0
        count = 0
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    await room.acquire()
                    piece = await asyncio.to_thread(next, pieces, None)
                    if piece is None:
                        room.release()
                        break
                    count += 1
                    total_s += piece.seconds
                    done = stored.get(piece.index)
                    if done is not None and abs(done.offset_s - piece.offset_s) < 0.01:
                        finished[done.index] = done  # decoded by an earlier run: not sent again
                        self._done_s += done.seconds
                        self._done_pieces += 1
                        room.release()
                        continue
                    if done is not None:
                        log.warning("job_piece_moved", piece=piece.index, was=done.offset_s, now=piece.offset_s)
                    group.create_task(self._piece(piece, room, finished))
        finally:
            # Still running in its thread after a cancel (ValueError): it closes when collected.
            with contextlib.suppress(ValueError):
                pieces.close()
        await self._finish([finished[i] for i in sorted(finished)], total_s, pieces_total=count)

    async def _piece(self, piece: AudioPiece, room: asyncio.Semaphore, finished: dict[int, PieceRecord]) -> None:
        try:
            request = pb.TranscribeRequest(
                audio_content=piece.pcm,
                encoding=pb.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=SAMPLE_RATE,
                audio_channel_count=1,
                options=RecordingSpeakers.piece_options(self.job.spec.options, piece.index),
            )

            async def ready() -> pb.TranscribeRequest:
                return request

            response = await self._on_worker(ready, piece.seconds)
            record = PieceRecord(piece.index, piece.offset_s, piece.seconds, response.SerializeToString())
            self._done_s += piece.seconds
            self._done_pieces += 1
            await self._store(self.ctx.store.piece_done, record, self._done_s, self._done_pieces)
            finished[piece.index] = record
        finally:
            room.release()

    async def _on_worker(
        self, request: Callable[[], Awaitable[pb.TranscribeRequest]], seconds: float
    ) -> pb.TranscribeResponse:
        """One piece on a worker: a fair slot among this gateway's batch pieces, then a batch slot in the
        fleet queue; a worker lost mid-piece (UNAVAILABLE) is replaced, up to MAX_TRIES workers."""
        ctx, job = self.ctx, self.job
        metadata = ((REQUEST_ID_HEADER, job.id), (PRIORITY_HEADER, BATCH_PRIORITY))
        model = ctx.models.resolve(job.spec.options.model)  # resolved at creation; UNKNOWN_MODEL if it went away
        tried: set[str] = set()
        for attempt in range(1, MAX_TRIES + 1):
            async with ctx.slots.take(job.owner), ctx.dispatcher.slot(tried, None, model, batch=True) as handle:
                tried.add(handle.name)
                self.reached_worker = True
                message = await request()
                ctx.counters.pieces += 1
                ctx.counters.piece_seconds += seconds
                ctx.counters.in_flight += 1
                try:
                    response: pb.TranscribeResponse = await handle.transcription.Transcribe(
                        message, timeout=max(600.0, 30 * seconds), metadata=metadata
                    )
                    return response
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == MAX_TRIES:
                        raise
                    handle.mark_unreachable(f"call failed: {exc.details()}")
                    log.warning("job_piece_retrying", worker=handle.name, details=exc.details())
                finally:
                    ctx.counters.in_flight -= 1
        raise AssertionError("unreachable")

    async def _finish(
        self, pieces: list[PieceRecord], total_s: float, pieces_total: int = 1, last: PieceRecord | None = None
    ) -> None:
        parts = [(p.offset_s, pb.TranscribeResponse.FromString(p.result)) for p in pieces]
        # Speaker labels: every piece's voice embeddings (stored with it, so a resumed job has them all)
        # clustered once over the whole recording, as for a Transcribe split over the workers.
        speakers = RecordingSpeakers.of(self.job.spec.options)
        if speakers is not None:
            for offset, part in parts:
                speakers.add(part, offset)
        result = shard.merge(parts) if parts else pb.TranscribeResponse()
        if speakers is not None:
            speakers.finish(result)
        result.request_id = self.job.id
        result.audio_duration.FromNanoseconds(round(total_s * 1e9))
        result.processing_time.FromNanoseconds(round((time.monotonic() - self._started) * 1e9))
        await self._store(
            self.ctx.store.finish, result.SerializeToString(), total_s, pieces_total or len(pieces), last=last
        )
        log.info("job_succeeded", audio_s=round(total_s, 2), pieces=pieces_total, segments=len(result.segments))


def _first(exc: BaseException) -> BaseException:
    """The first real error of a task group (a piece's), unwrapped."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _code_name(value: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == value), str(value))
