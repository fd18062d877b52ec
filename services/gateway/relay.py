"""Streams that outlive their worker.

The gateway relays a stream to one worker and keeps the client's audio since the worker's last resume
point. If the worker dies or drains mid-stream, the relay opens the stream on another worker with the
saved session state, replays the kept audio with its original chunk boundaries, and carries on: the
client sees one continuous stream, with no error and no word lost or repeated. While no worker is up,
the stream waits (bounded by its deadline and STREAM_FAILOVER_WAIT_S) instead of failing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import grpc
import structlog
from scribe_client.call_status import StatusKeeper

from services.common import audio
from services.common.errors import RequestError, config_not_first, config_twice
from services.common.rpclog import REQUEST_ID_HEADER, RequestLine
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry, WorkerHandle
from services.gen import transcription_pb2 as pb
from services.gpu_worker.validation import check_streaming_encoding

log = structlog.get_logger()

# Errors after which the stream moves: the worker went away (killed, draining, unreachable). Anything
# else is the worker's answer to this stream, and another worker would give the same.
MOVABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
MAX_MOVES = 5


class RetainedAudio:
    """The client's audio chunks from some byte offset on, as they arrived."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[int, bytes]] = deque()  # (byte offset in the stream, data)
        self.end = 0

    @property
    def start(self) -> int:
        return self.chunks[0][0] if self.chunks else self.end

    def add(self, data: bytes) -> None:
        self.chunks.append((self.end, data))
        self.end += len(data)

    def trim_before(self, offset: int) -> None:
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= offset:
            self.chunks.popleft()

    def since(self, offset: int) -> list[bytes]:
        """Chunks from `offset` on; only the first is cut, so later chunk edges stay where they were."""
        out = []
        for start, data in self.chunks:
            if start + len(data) <= offset:
                continue
            out.append(data[max(0, offset - start) :])
        return out

    @property
    def bytes_held(self) -> int:
        return self.end - self.start


class StreamRelay:
    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        line: RequestLine,
        context: grpc.aio.ServicerContext,
        wait_s: float,
        models: FleetModels,
    ) -> None:
        self._registry = registry
        self._models = models
        self._model: str | None = None  # the stream's model, from its config
        self._dispatcher = dispatcher
        self._line = line
        self._context = context
        self._wait_s = wait_s
        self._audio = RetainedAudio()
        self._arrived = asyncio.Event()
        self._client_done = False
        self._client_error: RequestError | None = None
        self.moves = 0

    async def run(
        self, requests: AsyncIterator[pb.StreamingTranscribeRequest]
    ) -> AsyncIterator[pb.StreamingTranscribeResponse]:
        first = await anext(requests, None)
        if first is None:
            return
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise config_not_first()
        config = pb.StreamingConfig()
        config.CopyFrom(first.streaming_config)
        # Only the gateway may resume a session: a client's resume state would let it forge one.
        config.ClearField("resume")
        # The stream stays on workers of its model, wherever it moves.
        self._model = config.options.model = self._line.fields["model"] = self._models.resolve(config.options.model)
        check_streaming_encoding(config)
        try:
            channels = audio.check_pcm_format(config.sample_rate_hertz, config.audio_channel_count)
        except audio.AudioError as err:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, err.reason, err.message) from None
        frame_bytes = 2 * channels
        # Admitted and valid: say so at once. A client can then send audio knowing the stream was not
        # refused, which keeps a refusal from meeting an in-flight write (grpc/grpc#36066).
        await self._context.send_initial_metadata(())
        reader = asyncio.create_task(self._read(requests))
        resume: pb.StreamResumePoint | None = None
        exclude: set[str] = set()
        try:
            while True:
                handle = await self._worker(exclude)
                self._line.fields["worker"] = handle.name
                opening = pb.StreamingTranscribeRequest()
                opening.streaming_config.CopyFrom(config)
                start = 0
                if resume is not None:
                    opening.streaming_config.resume.CopyFrom(resume)
                    seconds = resume.audio_offset.ToNanoseconds() / 1e9
                    start = round(seconds * config.sample_rate_hertz) * frame_bytes
                    # What is replayed was live on the first worker: the new one decodes it that way too.
                    replayed_s = self._audio.end / frame_bytes / config.sample_rate_hertz
                    opening.streaming_config.resume.replay_until.FromNanoseconds(round(replayed_s * 1e9))
                call = handle.transcription.StreamingTranscribe(
                    timeout=self._context.time_remaining(), metadata=((REQUEST_ID_HEADER, self._line.request_id),)
                )
                keeper = StatusKeeper(call)
                writer = asyncio.create_task(self._write(call, opening, start))
                leaving = asyncio.create_task(_cancel_when_retired(handle, call))
                try:
                    with handle.track_stream():
                        async for response in call:
                            if response.HasField("resume_point"):
                                resume = pb.StreamResumePoint()
                                resume.CopyFrom(response.resume_point)
                                seconds = resume.audio_offset.ToNanoseconds() / 1e9
                                self._audio.trim_before(round(seconds * config.sample_rate_hertz) * frame_bytes)
                                response.ClearField("resume_point")
                            if response.results or response.speech_event_type:
                                yield response
                    return
                except asyncio.CancelledError:
                    if self._client_error is not None and not self._context.cancelled():
                        raise self._client_error from None
                    if not _moved_off(leaving) or self._context.cancelled() or self.moves >= MAX_MOVES:
                        raise
                    # The gateway drains this worker (its host left DNS): resume elsewhere, as after a failure.
                    self.moves += 1
                    self._line.fields["moves"] = self.moves
                    exclude = {handle.name}
                    log.info("stream_moved", worker=handle.name, code="DRAINING", details=handle.retired)
                    continue
                except grpc.aio.AioRpcError as failed:
                    if self._client_error is not None:
                        raise self._client_error from None
                    # The worker's own status, even where grpc.aio reports its write race instead.
                    code, details, trailing = await keeper.settle(failed)
                    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)
                    if code not in MOVABLE or self.moves >= MAX_MOVES or self._context.cancelled():
                        raise exc from None
                    self.moves += 1
                    self._line.fields["moves"] = self.moves
                    if code == grpc.StatusCode.UNAVAILABLE:
                        handle.mark_unreachable(f"stream failed: {code.name} {details}")
                    exclude = {handle.name}
                    log.warning(
                        "stream_moved",
                        worker=handle.name,
                        code=code.name,
                        details=details,
                        replay_bytes=self._audio.end - start,
                    )
                finally:
                    leaving.cancel()
                    writer.cancel()
                    call.cancel()
        finally:
            reader.cancel()

    async def _worker(self, exclude: set[str]) -> WorkerHandle:
        """A serving worker of the stream's model, preferring one not in `exclude`; waits for one when none
        serves (but not for a model that has no worker at all)."""
        model = self._model
        handle = self._registry.pick(model, exclude) or self._registry.pick(model)
        if handle is not None:
            return handle
        if not self._registry.of(model):
            raise self._dispatcher.no_worker(model)
        remaining = self._context.time_remaining()
        timeout = self._wait_s if remaining is None else min(self._wait_s, remaining)
        if await self._dispatcher.wait_for_serving(timeout, model):
            handle = self._registry.pick(model)
        if handle is None:
            raise self._dispatcher.no_worker(model, timeout)
        return handle

    async def _read(self, requests: AsyncIterator[pb.StreamingTranscribeRequest]) -> None:
        """Take in the client's audio, whichever worker is serving it."""
        try:
            async for request in requests:
                if request.WhichOneof("streaming_request") != "audio_content":
                    self._client_error = config_twice()
                    break
                self._audio.add(request.audio_content)
                self._arrived.set()
        finally:
            self._client_done = True
            self._arrived.set()

    async def _write(self, call: grpc.aio.StreamStreamCall, opening: pb.StreamingTranscribeRequest, start: int) -> None:
        """Config (with the resume state), the kept audio from `start`, then new audio as it comes."""
        try:
            await call.write(opening)
            position = start
            while True:
                self._arrived.clear()
                for data in self._audio.since(position):
                    await call.write(pb.StreamingTranscribeRequest(audio_content=data))
                    position += len(data)
                if self._client_error is not None:
                    # Ends the read loop with CancelledError; run() turns that into the client's error.
                    call.cancel()
                    return
                if self._client_done and position >= self._audio.end:
                    await call.done_writing()
                    return
                await self._arrived.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the worker side ended; the read loop decides what happens next


async def _cancel_when_retired(handle: WorkerHandle, call: grpc.aio.StreamStreamCall) -> None:
    await handle.retiring.wait()
    call.cancel()


def _moved_off(leaving: asyncio.Task[None]) -> bool:
    """Whether the stream's call was cancelled because its worker is being drained, not the stream itself."""
    task = asyncio.current_task()
    return leaving.done() and not leaving.cancelled() and (task is None or task.cancelling() == 0)
