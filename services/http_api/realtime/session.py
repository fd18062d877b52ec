"""A realtime transcription session: client events in, server events out, over the gateway's
StreamingTranscribe (so failover, batching and the gateway's limits hold as for any gRPC stream).

Audio goes to one gRPC stream at a time. A commit, a clear, or a `session.update` that changes how audio
is decoded half-closes it (the worker makes its audio final) and the next append opens a new one; the
streams' results are sent strictly in order, so items complete in the order they were spoken.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from services.http_api.errors import from_rpc_error
from services.http_api.gateway import Gateway
from services.http_api.realtime import config as cfg
from services.http_api.realtime.items import Ids, Translator
from services.http_api.realtime.protocol import Append, ClientEvent, Commit, Problem, SessionUpdate, audio_bytes
from services.http_api.realtime.stream import Mark, Stream, StreamEnd

log = structlog.get_logger()
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: OpenAI's smallest commit.
MIN_COMMIT_MS = 100


def _g711_table(alaw: bool) -> np.ndarray:
    """16-bit samples of the 256 G.711 codes (ITU-T G.711)."""
    codes = np.arange(256, dtype=np.int32)
    if alaw:
        c = codes ^ 0x55
        exponent, mantissa = (c >> 4) & 7, c & 15
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
        return np.where(c & 0x80, magnitude, -magnitude).astype("<i2")
    c = ~codes & 0xFF
    exponent, mantissa = (c >> 4) & 7, c & 15
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(c & 0x80, -magnitude, magnitude).astype("<i2")


G711 = {"audio/pcmu": _g711_table(alaw=False), "audio/pcma": _g711_table(alaw=True)}


@dataclass
class Ended(Exception):
    """The session is over: this error was sent; close the socket with `close_code`."""

    problem: Problem
    close_code: int


def close_code_for(status: int) -> int:
    """WebSocket close code for an HTTP-like status: 1008 (policy) for the client's fault, 1013 (try again
    later) for a full or missing fleet, 1011 otherwise."""
    if status in (429, 503):
        return 1013
    return 1008 if 400 <= status < 500 else 1011


class RealtimeSession:
    def __init__(
        self,
        send: Send,
        gateway: Gateway,
        token: str | None,
        request_id: str,
        fleet: cfg.FleetInfo,
        max_seconds: float,
    ) -> None:
        self.id = "sess_" + uuid.uuid4().hex[:20]
        self.expires_at = int(time.time() + max_seconds)
        self._send = send
        self._gateway = gateway
        self._token = token
        self._request_id = request_id
        self._fleet = fleet
        self._max_ms = max_seconds * 1000
        self.settings = cfg.SessionSettings()
        self._translator = Translator(Ids(self.id))
        self._streams: deque[Stream] = deque()
        self._current: Stream | None = None
        self._current_key: tuple[object, ...] = ()
        self.audio_ms = 0.0  # session time: all audio appended
        self._pending_ms = 0.0  # appended since the last commit or clear
        self._odd = b""  # a PCM16 byte left over from an append of odd length
        self._wake = asyncio.Event()
        self.ended: asyncio.Future[Ended] = asyncio.get_running_loop().create_future()
        self._emitter = asyncio.create_task(self._emit())
        self.streams_opened = 0

    def created(self) -> dict[str, Any]:
        return {"type": "session.created", "event_id": self._translator.ids.event(), "session": self._describe()}

    def error(self, problem: Problem) -> dict[str, Any]:
        return {"type": "error", "event_id": self._translator.ids.event(), "error": problem.error()}

    def _describe(self) -> dict[str, object]:
        return cfg.describe(self.settings, self.id, self.expires_at)

    async def handle(self, event: ClientEvent) -> None:
        """One client event; Problem for a refused one (the session goes on)."""
        if isinstance(event, Append):
            await self._append(audio_bytes(event), event.event_id)
        elif isinstance(event, Commit):
            await self._commit(event.event_id)
        elif isinstance(event, SessionUpdate):
            await self._update(event)
        else:
            await self._clear()

    async def _update(self, event: SessionUpdate) -> None:
        updated = cfg.apply(self.settings, event.session, self._fleet, event.event_id)
        changed = updated.stream_key() != self.settings.stream_key()
        new_format = (updated.encoding, updated.rate) != (self.settings.encoding, self.settings.rate)
        self.settings = updated
        self._translator.logprobs = updated.logprobs
        current = self._current
        if current is not None and (new_format or (changed and current.vad)):
            # With server VAD a stream's items end themselves: end this one so the new settings apply now.
            # Without, buffered audio waits for its commit and the new settings apply from the next one,
            # unless the audio format changed: the stream cannot take the new audio, so the buffer is
            # committed now.
            if not current.vad and self._pending_ms > 0:
                current.mark(Mark("commit", round(self.audio_ms)))
            await self._close_current()
        reply = {"type": "session.updated", "event_id": self._translator.ids.event(), "session": self._describe()}
        await self._in_order(reply)

    async def _append(self, data: bytes, event_id: str | None) -> None:
        s = self.settings
        if s.encoding == "audio/pcm":
            data = self._odd + data
            data, self._odd = data[: len(data) // 2 * 2], data[len(data) // 2 * 2 :]
        else:
            data = G711[s.encoding][np.frombuffer(data, dtype=np.uint8)].tobytes()
        ms = len(data) / 2 / s.rate * 1000
        if self.audio_ms + ms > self._max_ms:
            raise Ended(
                Problem(
                    f"the session reached its maximum of {self._max_ms / 1000:g} s of audio (MAX_STREAM_SECONDS); "
                    "open a new session to go on",
                    "session_expired",
                    event_id=event_id,
                ),
                1008,
            )
        stream = self._current
        if stream is None or not stream.writing:
            stream = await self._open()
        await stream.write(data)
        self.audio_ms += ms
        self._pending_ms += ms

    async def _open(self) -> Stream:
        s = self.settings
        td = s.turn_detection
        call = self._gateway.streaming_transcribe(self._token, f"{self._request_id}-{self.streams_opened}")
        stream = Stream(call, round(self.audio_ms), td is not None, td.prefix_padding_ms if td else 0)
        self.streams_opened += 1
        self._current, self._current_key = stream, s.stream_key()
        self._streams.append(stream)
        self._wake.set()
        await stream.open(cfg.stream_config(s))
        return stream

    @property
    def draining(self) -> bool:
        """Streams that take no more audio are still sending results: the session waits on the fleet, not
        on its client."""
        return any(stream is not self._current for stream in self._streams)

    async def end_audio(self) -> None:
        """The client stopped sending audio: what it sent becomes final (the idle timeout's first step)."""
        if self._current is not None and not self._current.vad and self._pending_ms > 0:
            self._current.mark(Mark("commit", round(self.audio_ms)))
        await self._close_current()

    async def _close_current(self) -> None:
        stream, self._current = self._current, None
        self._pending_ms = 0.0
        if stream is not None:
            await stream.finish()

    async def _commit(self, event_id: str | None) -> None:
        if self._pending_ms < MIN_COMMIT_MS or self._current is None:
            raise Problem(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {self._pending_ms:.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
                event_id=event_id,
            )
        self._current.mark(Mark("commit", round(self.audio_ms)))
        self._pending_ms = 0.0
        await self._close_current()

    async def _clear(self) -> None:
        cleared = {"type": "input_audio_buffer.cleared", "event_id": self._translator.ids.event()}
        if self._current is not None:
            self._current.mark(Mark("clear"))
        await self._in_order(cleared)
        self._pending_ms = 0.0
        self._odd = b""
        await self._close_current()

    async def _in_order(self, event: dict[str, Any]) -> None:
        """Send `event` after what was said about the audio before it: after every result of a stream that
        no longer takes audio (so a commit, then a session.update, is answered once the commit's items are
        complete), and after the results already in of the one still taking it."""
        if not self._streams:
            await self._send(event)
        elif self._streams[-1] is self._current:
            self._current.mark(Mark("send", event=event))
        else:
            self._streams[-1].after.append(event)

    async def _emit(self) -> None:
        """Each stream's results, in order, as server events; a failed stream ends the session."""
        try:
            while True:
                while not self._streams:
                    self._wake.clear()
                    await self._wake.wait()
                stream = self._streams[0]
                t = self._translator
                t.start_stream(stream.base_ms, stream.vad, stream.padding_ms)
                ended: StreamEnd | None = None
                while True:
                    entry = await stream.entries.get()
                    if isinstance(entry, StreamEnd):
                        ended = entry
                        if not entry.error():
                            for event in t.end():
                                await self._send(event)
                    elif isinstance(entry, Mark):
                        if entry.kind == "commit":
                            for event in t.commit(entry.at_ms):
                                await self._send(event)
                        elif entry.kind == "clear":
                            t.clear()
                        elif entry.event is not None:
                            await self._send(entry.event)
                    elif ended is None:
                        for event in t.feed(entry):
                            await self._send(event)
                    if ended is not None and stream.entries.empty():
                        break
                self._streams.popleft()
                error = ended.error()
                if error is None:
                    for event in stream.after:
                        await self._send(event)
                if error is not None:
                    http = from_rpc_error(error)
                    problem = Problem(http.message, http.code, type=http.type)
                    log.warning("realtime_stream_failed", code=error.code().name, reason=http.code)
                    self.ended.set_result(Ended(problem, close_code_for(http.status)))
                    return
        except Exception as exc:  # a bug here must end the session, not leave it hanging
            log.exception("realtime_emitter_failed")
            if not self.ended.done():
                self.ended.set_result(
                    Ended(Problem(f"internal error: {exc}", "server_error", type="server_error"), 1011)
                )

    def close(self) -> None:
        """The client went away or the session ended: free every worker at once."""
        self._emitter.cancel()
        for stream in self._streams:
            stream.cancel()
        if self._current is not None:
            self._current.cancel()
