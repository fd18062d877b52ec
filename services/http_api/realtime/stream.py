"""One gRPC StreamingTranscribe of a realtime session: its config, the audio written as it comes, and its
responses queued in order with the marks the session puts between them (commit, clear, events to send)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import grpc
from scribe_client.call_status import StatusKeeper

from services.gen import transcription_pb2 as pb


@dataclass(frozen=True)
class StreamEnd:
    """The call is over: OK, or the gateway's status."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, Any], ...] = ()

    def error(self) -> grpc.aio.AioRpcError | None:
        if self.code == grpc.StatusCode.OK:
            return None
        return grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(*self.trailing), self.details)


@dataclass(frozen=True)
class Mark:
    """Something the session did between two responses: "commit" (at session ms), "clear", or "send" an event."""

    kind: str
    at_ms: int = 0
    event: dict[str, Any] | None = None


Entry = pb.StreamingTranscribeResponse | StreamEnd | Mark


class Stream:
    """A StreamingTranscribe call whose audio starts at session time `base_ms`."""

    def __init__(self, call: grpc.aio.StreamStreamCall, base_ms: int, vad: bool, padding_ms: int) -> None:
        self.call = call
        self.base_ms = base_ms
        self.vad = vad
        self.padding_ms = padding_ms
        self.entries: asyncio.Queue[Entry] = asyncio.Queue()
        self.after: list[dict[str, Any]] = []  # events to send once every result of the stream is out
        self.writing = True
        self._keeper = StatusKeeper(call)
        self._reader: asyncio.Task[None] | None = None

    async def open(self, config: pb.StreamingConfig) -> None:
        self._reader = asyncio.create_task(self._read())
        await self._write(pb.StreamingTranscribeRequest(streaming_config=config))

    async def write(self, audio: bytes) -> None:
        if self.writing and audio:
            await self._write(pb.StreamingTranscribeRequest(audio_content=audio))

    async def _write(self, request: pb.StreamingTranscribeRequest) -> None:
        try:
            await self.call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self.writing = False  # the call ended: the reader reports its status

    async def finish(self) -> None:
        """No more audio: the worker makes everything final, then the call ends."""
        if self.writing:
            self.writing = False
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self.call.done_writing()

    def mark(self, mark: Mark) -> None:
        self.entries.put_nowait(mark)

    def cancel(self) -> None:
        self.writing = False
        self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        end = StreamEnd()
        try:
            async for response in self.call:
                self.entries.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            code, details, trailing = await self._keeper.settle(exc)
            end = StreamEnd(code, details, tuple(trailing))
        finally:
            self.writing = False
            self.entries.put_nowait(end)
