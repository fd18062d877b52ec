"""One recording on every serving worker, with progress for the whole of it.

The recording is decoded a piece at a time (services.gateway.recordings.pieces); each piece goes to a worker as a
LINEAR16 TranscribeWithProgress through the fleet queue, so pieces land on whichever worker frees a
slot. Only `lookahead` pieces hold audio at once (decoded, queued or in flight), which bounds the
gateway's memory whatever the recording's length.

The client sees one progress stream: percent of all audio done over the pieces (never going back), and
segments in audio order, ids renumbered, each released once every piece before it is complete. The
head piece (the first incomplete one) releases its segments as its worker sends them; later pieces
buffer theirs. A worker lost mid-piece (UNAVAILABLE) has its buffered segments dropped and the piece
sent again to another worker, starting where the segments already released end: nothing reaches the
client twice, and nothing is skipped but a tail under RETRY_MIN_S after a released segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field

import grpc
import structlog

from services.common.audio import SAMPLE_RATE
from services.common.config import Settings
from services.common.convert import duration
from services.common.errors import RequestError
from services.common.rpclog import REQUEST_ID_HEADER, RequestLine
from services.gateway.recordings import shard
from services.gateway.recordings.pieces import SEARCH_S, AudioPiece, Source, iter_pieces
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.registry import Registry
from services.gateway.speakers.diarize import RecordingSpeakers
from services.gen import transcription_pb2 as pb

log = structlog.get_logger()

#: Audio left in a lost piece after its released segments that is not worth sending again.
RETRY_MIN_S = 1.0
#: Pieces holding audio per serving worker: one in its slot, one decoded and waiting.
LOOKAHEAD_PER_WORKER = 2


def piece_seconds(declared_s: float, serving: int, settings: Settings) -> float:
    """PIECE_SECONDS, or less so that a shorter recording still gives every worker a piece, and always
    short enough for a piece (with the cut's search margin) to fit in one message to a worker."""
    fits = 0.9 * settings.max_message_bytes / (2 * SAMPLE_RATE) - SEARCH_S
    if declared_s <= 0:
        return min(settings.piece_seconds, fits)
    return min(fits, max(shard.MIN_PIECE_S, min(settings.piece_seconds, declared_s / max(1, serving))))


@dataclass
class _Piece:
    index: int
    offset_s: float  # where the piece starts in the recording
    seconds: float
    # The piece's audio, kept in the request sent to its worker (one copy, not two) until the piece is
    # complete: only pieces in progress hold audio.
    request: pb.TranscribeWithProgressRequest | None
    attempt: int = 0
    start_s: float = 0.0  # piece time where the current attempt's audio begins
    done_s: float = 0.0  # piece time transcribed so far
    released_end_s: float = 0.0  # piece time where the segments already sent end
    pending: list[pb.Segment] = field(default_factory=list)  # recording time, not yet sent
    worker: str = ""
    finished: bool = False
    result: pb.TranscribeResponse | None = None  # the worker's language, without the segments we already have
    tried: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Report:
    piece: _Piece
    attempt: int
    response: pb.TranscribeWithProgressResponse
    worker: str


@dataclass(frozen=True)
class _Failed:
    piece: _Piece
    attempt: int
    error: Exception


@dataclass(frozen=True)
class _Decoded:
    """A piece was decoded (`piece`), or the recording ended (`piece` None)."""

    piece: _Piece | None


@dataclass(frozen=True)
class _DecodeFailed:
    """The recording cannot be decoded (AudioError), or decoding broke unexpectedly."""

    error: Exception


_Event = _Report | _Failed | _Decoded | _DecodeFailed


class Pipeline:
    """One run: `reports()` yields the client's TranscribeWithProgressResponses, the last with `result`."""

    def __init__(
        self,
        source: Source,
        options: pb.RecognitionOptions,
        registry: Registry,
        dispatcher: Dispatcher,
        settings: Settings,
        context: grpc.aio.ServicerContext,
        line: RequestLine,
        model: str | None = None,
    ) -> None:
        self._source = source
        self._model = model  # every piece goes to a worker of this model
        self._options = options
        # Speaker labels, when asked for: every piece's voice embeddings are clustered together at the end.
        self._speakers = RecordingSpeakers.of(options)
        self._registry = registry
        self._dispatch = dispatcher
        self._settings = settings
        self._context = context
        self._line = line
        serving = [w for w in registry.of(model) if w.serving]
        self._room = asyncio.Semaphore(max(LOOKAHEAD_PER_WORKER, LOOKAHEAD_PER_WORKER * len(serving)))
        # Pieces of this recording in the fleet queue or on a worker: at most the fleet's slots, so one
        # recording never fills GATEWAY_QUEUE_SIZE by itself; the rest wait here, decoded.
        self._slots = asyncio.Semaphore(max(1, sum(w.capacity for w in serving)))
        self._serving = max(1, len(serving))
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._pieces: list[_Piece] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._head = 0
        self._next_id = 0
        self._segments: list[pb.Segment] = []
        self._workers: dict[str, None] = {}  # workers whose results count, in order
        self._declared_s = 0.0
        self._decoded_s = 0.0
        self._total_s: float | None = None
        self._percent = 0.0
        self._processed_s = 0.0

    # --- the client's stream ----------------------------------------------------------------------

    async def reports(self) -> AsyncGenerator[pb.TranscribeWithProgressResponse, None]:
        started = time.perf_counter()
        self._declared_s = await asyncio.to_thread(self._source.declared_seconds)
        piece_s = piece_seconds(self._declared_s, self._serving, self._settings)
        feeder = asyncio.create_task(self._feed(piece_s))
        announced = False
        try:
            while not self._complete():
                event = await self._events.get()
                if isinstance(event, _DecodeFailed):
                    raise event.error
                if isinstance(event, _Failed):
                    self._retry_or_raise(event)
                    for worker, segments in self._release():
                        yield self._progress(segments, worker)
                    continue
                if not announced:
                    # The first report waits for the first piece: a file that cannot be decoded gets its
                    # error with no report before it.
                    announced = True
                    yield self._progress([], "")
                if isinstance(event, _Decoded):
                    if event.piece is not None:
                        self._start(event.piece)
                    continue
                if event.attempt != event.piece.attempt:
                    continue  # left over from an attempt that failed
                self._take(event)
                released = self._release()
                if released:
                    for worker, segments in released:
                        yield self._progress(segments, worker)
                elif self._advance():
                    yield self._progress([], event.worker)
            if not announced:
                yield self._progress([], "")
            yield self._final(time.perf_counter() - started)
        finally:
            feeder.cancel()
            for task in self._tasks:
                task.cancel()

    def _complete(self) -> bool:
        return self._total_s is not None and self._head == len(self._pieces)

    def _progress(self, segments: list[pb.Segment], worker: str) -> pb.TranscribeWithProgressResponse:
        self._advance()
        report = pb.TranscribeWithProgressResponse(
            segments=segments,
            processed_audio=duration(self._processed_s),
            audio_duration=duration(self._length()),
            progress_percent=self._percent,
            worker_id=worker,
        )
        if self._speakers is not None:
            self._speakers.interim(report.segments)  # copies: the final result keeps the words it labels
        return report

    def _length(self) -> float:
        return self._total_s if self._total_s is not None else max(self._declared_s, self._decoded_s)

    def _advance(self) -> bool:
        """Recompute progress; True when the percent went up."""
        length = self._length()
        done = min(length, sum(p.done_s for p in self._pieces))
        percent = round(min(100.0, 100.0 * done / length), 2) if length > 0 else 0.0
        self._processed_s = max(self._processed_s, done)
        if percent > self._percent:
            self._percent = percent
            return True
        return False

    def _final(self, elapsed_s: float) -> pb.TranscribeWithProgressResponse:
        total = self._length()
        results = [p.result for p in self._pieces if p.result is not None]
        first = results[0] if results else pb.TranscribeResponse()
        language = shard.main_language(self._segments, first.language_code)
        first = next((r for r in results if r.language_code == language), first)
        workers = [w for w in self._workers if w]
        result = pb.TranscribeResponse(
            segments=self._segments,
            transcript=" ".join(s.text.strip() for s in self._segments if s.text.strip()),
            language_code=first.language_code,
            language_probability=first.language_probability,
            audio_duration=duration(total),
            processing_time=duration(elapsed_s),
            worker_id=",".join(workers),
            request_id=self._line.request_id,
        )
        if self._speakers is not None:
            self._speakers.finish(result)
            self._line.fields["speakers"] = len(result.speakers)
        self._line.fields.update(pieces=len(self._pieces), worker=result.worker_id, audio_s=round(total, 3))
        return pb.TranscribeWithProgressResponse(
            processed_audio=duration(total),
            audio_duration=duration(total),
            progress_percent=100.0,
            result=result,
            worker_id=result.worker_id,
        )

    # --- pieces in, segments out ----------------------------------------------------------------

    def _take(self, event: _Report) -> None:
        piece, response = event.piece, event.response
        piece.worker = event.worker
        offset_ns = round((piece.offset_s + piece.start_s) * 1e9)
        for segment in response.segments:
            seg = pb.Segment()
            seg.CopyFrom(segment)
            shard.shift_segment(seg, offset_ns)
            piece.pending.append(seg)
        local = piece.start_s + response.processed_audio.ToNanoseconds() / 1e9
        piece.done_s = max(piece.done_s, min(local, piece.seconds))
        if response.HasField("result"):
            if self._speakers is not None:
                self._speakers.add(response.result, piece.offset_s + piece.start_s)
            piece.result = pb.TranscribeResponse(
                language_code=response.result.language_code,
                language_probability=response.result.language_probability,
            )
            self._finish(piece)

    def _finish(self, piece: _Piece) -> None:
        self._workers[piece.worker] = None
        piece.finished = True
        piece.done_s = piece.seconds
        piece.request = None
        self._room.release()
        # A piece's audio (megabytes, inside gRPC and protobuf objects that refer to each other) is freed
        # only by a full collection, which the gateway's allocation pattern triggers rarely: over hour-long
        # uploads its peak RSS rose +100 to +190 MiB and fell back at random; collecting here keeps it at
        # +50 MiB. The gateway's heap is small, so a collection costs milliseconds, once per piece.
        gc.collect()

    def _release(self) -> list[tuple[str, list[pb.Segment]]]:
        """Segments now in order, grouped by the worker that decoded them; moves the head on."""
        out: list[tuple[str, list[pb.Segment]]] = []
        while self._head < len(self._pieces):
            piece = self._pieces[self._head]
            if piece.pending:
                for seg in piece.pending:
                    seg.id = self._next_id
                    self._next_id += 1
                self._segments.extend(piece.pending)
                self._workers[piece.worker] = None
                out.append((piece.worker, piece.pending))
                end_ns = piece.pending[-1].end_offset.ToNanoseconds()
                piece.released_end_s = end_ns / 1e9 - piece.offset_s
                piece.pending = []
            if not piece.finished:
                break
            self._head += 1
        return out

    def _retry_or_raise(self, event: _Failed) -> None:
        piece, error = event.piece, event.error
        if event.attempt != piece.attempt or piece.finished:
            # A worker lost right after it sent a piece's result fails a piece that is already complete.
            return
        if not (isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE):
            raise error
        piece.pending = []  # never sent, and the next attempt decodes that audio again
        piece.attempt += 1
        piece.start_s = piece.released_end_s
        piece.done_s = piece.start_s
        log.warning("piece_retrying", piece=piece.index, worker=piece.worker, from_s=round(piece.start_s, 2))
        if piece.seconds - piece.start_s < RETRY_MIN_S:
            self._finish(piece)
        else:
            self._launch(piece)

    # --- decoding and dispatch ------------------------------------------------------------------

    async def _feed(self, piece_s: float) -> None:
        """Decode pieces as room frees up; blocking decode steps run in a thread, one at a time."""
        settings = self._settings
        pieces: Generator[AudioPiece, None, None] = iter_pieces(
            self._source, piece_s, settings.max_audio_seconds, settings.max_decode_ratio
        )
        try:
            while True:
                await self._room.acquire()
                audio = await asyncio.to_thread(next, pieces, None)
                if audio is None:
                    self._room.release()
                    break
                self._decoded_s += audio.seconds
                request = self._request(audio.pcm, audio.index)
                self._events.put_nowait(_Decoded(_Piece(audio.index, audio.offset_s, audio.seconds, request)))
                del audio, request
            self._total_s = self._decoded_s
            self._events.put_nowait(_Decoded(None))
        except Exception as err:  # AudioError, or a bug that must end the call rather than hang it
            self._events.put_nowait(_DecodeFailed(err))
        finally:
            # Still running in its thread after a cancel (ValueError): it closes when collected.
            with contextlib.suppress(ValueError):
                pieces.close()

    def _start(self, piece: _Piece) -> None:
        self._pieces.append(piece)
        self._launch(piece)

    def _launch(self, piece: _Piece) -> None:
        task = asyncio.create_task(self._attempt(piece, piece.attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request(self, pcm: bytes, index: int) -> pb.TranscribeWithProgressRequest:
        return pb.TranscribeWithProgressRequest(
            request=pb.TranscribeRequest(
                audio_content=pcm,
                encoding=pb.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=SAMPLE_RATE,
                audio_channel_count=1,
                options=RecordingSpeakers.piece_options(self._options, index),
            )
        )

    def _piece_request(self, piece: _Piece) -> pb.TranscribeWithProgressRequest:
        """The piece's request, from where its released segments end when it is sent again."""
        assert piece.request is not None, "a complete piece is never sent"
        if not piece.start_s:
            return piece.request
        start = round(piece.start_s * SAMPLE_RATE) * 2
        return self._request(piece.request.request.audio_content[start:], piece.index)

    async def _attempt(self, piece: _Piece, attempt: int) -> None:
        """One try of one piece; its reports and its failure go to the event queue."""
        try:
            async with self._slots:
                while True:
                    try:
                        return await self._on_worker(piece, attempt)
                    except RequestError as err:
                        # The first piece is refused at the door like any call; later ones wait their turn.
                        if err.reason != "QUEUE_FULL" or piece.index == 0 or err.retry_after_s is None:
                            raise
                        delay = err.retry_after_s
                    await asyncio.sleep(delay)
        except Exception as exc:  # a worker's status, a refusal, or a bug that must end the call rather than hang it
            self._events.put_nowait(_Failed(piece, attempt, exc))

    async def _on_worker(self, piece: _Piece, attempt: int) -> None:
        metadata = ((REQUEST_ID_HEADER, self._line.request_id),)
        async with self._dispatch.slot(piece.tried, self._context.time_remaining(), self._model) as handle:
            piece.tried.add(handle.name)
            call = handle.transcription.TranscribeWithProgress(
                self._piece_request(piece), timeout=self._context.time_remaining(), metadata=metadata
            )
            finished = False
            try:
                async for response in call:
                    finished = response.HasField("result")
                    self._events.put_nowait(_Report(piece, attempt, response, response.worker_id or handle.name))
                    if finished:
                        break  # the piece is complete: whatever becomes of the stream after its result is no failure
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    handle.mark_unreachable(f"call failed: {exc.details()}")
                raise
            finally:
                call.cancel()  # a cancelled pipeline stops the worker at its next segment
            if not finished:
                raise RequestError(
                    grpc.StatusCode.INTERNAL, "WORKER_ERROR", f"{handle.name} ended a piece without its result"
                )
