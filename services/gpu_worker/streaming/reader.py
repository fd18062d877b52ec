"""A live stream's requests, read ahead of the decoder on a task of their own.

A decode in progress then never looks like an idle client, and the audio that arrived during a decode
is taken in one go. The idle timeout and a worker's drain end the reading with a status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from services.common.errors import RequestError, config_twice
from services.gen import transcription_pb2 as pb

DRAINING = "WORKER_DRAINING"


@dataclass
class Batch:
    """What the reader had queued: audio chunks, then maybe the end of the stream or an error."""

    chunks: list[bytes]
    ended: bool = False
    error: RequestError | None = None
    arrived: list[float] = field(default_factory=list)  # time.monotonic() each chunk came in


class RequestReader:
    """Reads audio requests into a queue on its own task, enforcing the idle timeout."""

    def __init__(
        self,
        requests: AsyncIterator[pb.StreamingTranscribeRequest],
        idle_timeout_s: float,
        draining: asyncio.Event | None = None,
        worker_id: str = "",
    ) -> None:
        self._requests = requests
        self._idle = idle_timeout_s
        self._queue: asyncio.Queue[tuple[bytes, float] | RequestError | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())
        self._drain_task = asyncio.create_task(self._drain(draining, worker_id)) if draining else None

    async def _drain(self, draining: asyncio.Event, worker_id: str) -> None:
        await draining.wait()
        self._task.cancel()
        # The gateway re-sends this stream's unfinished audio to another worker.
        self._queue.put_nowait(
            RequestError(
                grpc.StatusCode.UNAVAILABLE,
                DRAINING,
                f"worker {worker_id} is shutting down: the stream continues on another worker",
            )
        )

    async def _read(self) -> None:
        while True:
            try:
                request = await asyncio.wait_for(anext(self._requests), self._idle)
            except StopAsyncIteration:
                self._queue.put_nowait(None)
                return
            except TimeoutError:
                self._queue.put_nowait(idle_timeout_error(self._idle))
                return
            except grpc.RpcError:
                # The client went away; the call is over and nothing will read what is queued.
                self._queue.put_nowait(None)
                return
            if request.WhichOneof("streaming_request") != "audio_content":
                self._queue.put_nowait(config_twice())
                return
            self._queue.put_nowait((request.audio_content, time.monotonic()))

    @property
    def pending(self) -> bool:
        """More audio is already queued."""
        return not self._queue.empty()

    async def batch(self) -> Batch:
        """Wait for at least one item, then take all that are queued."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        batch = Batch([])
        for item in items:
            if isinstance(item, tuple):
                batch.chunks.append(item[0])
                batch.arrived.append(item[1])
            elif item is None:
                batch.ended = True
            else:
                batch.error = item
        return batch

    def close(self) -> None:
        self._task.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()


def idle_timeout_error(timeout_s: float) -> RequestError:
    return RequestError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "STREAM_IDLE_TIMEOUT",
        f"no audio for {timeout_s:g} s: send audio continuously (silence included) or close the stream",
    )


def stream_too_long_error(max_s: float) -> RequestError:
    return RequestError(
        grpc.StatusCode.OUT_OF_RANGE,
        "STREAM_TOO_LONG",
        f"the stream passed the {max_s:g} s maximum; results up to there were sent: open a new stream to go on",
    )
