"""The upload pipeline's bookkeeping against scripted workers: the orderings a live fleet hits only by chance.

The live behaviour (real workers killed mid-piece) is in test_upload.py; here a worker's replies are scripted so
that a race seen there once in CI (a worker lost just after it sent a piece's result) happens every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest

from services.common.config import Settings
from services.common.rpclog import RequestLine
from services.gateway.recordings.pieces import Source
from services.gateway.recordings.pipeline import Pipeline
from services.gen import transcription_pb2 as pb

pytestmark = pytest.mark.fast


def _seconds(value: float) -> dict[str, int]:
    return {"seconds": int(value), "nanos": round((value % 1) * 1e9)}


def _segment(text: str, start: float, end: float) -> pb.Segment:
    return pb.Segment(text=text, start_offset=_seconds(start), end_offset=_seconds(end))


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "worker lost")


Script = Callable[[pb.TranscribeWithProgressRequest], AsyncIterator[pb.TranscribeWithProgressResponse]]


class _Call:
    def __init__(self, replies: AsyncIterator[pb.TranscribeWithProgressResponse]) -> None:
        self._replies = replies

    def __aiter__(self) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        return self._replies

    def cancel(self) -> bool:
        return True


@dataclass
class _Worker:
    name: str
    scripts: list[Script]
    serving: bool = True
    capacity: int = 1
    in_flight: int = 0
    calls: list[float] = field(default_factory=list)  # seconds of audio in each request

    @property
    def transcription(self) -> _Worker:
        return self

    def TranscribeWithProgress(self, request: pb.TranscribeWithProgressRequest, **_: object) -> _Call:
        self.calls.append(len(request.request.audio_content) / 32000)
        return _Call(self.scripts.pop(0)(request))

    def mark_unreachable(self, reason: str) -> None:
        self.serving = False


class _Fleet:
    """Registry and Dispatcher in one: each piece goes to the next worker in `order`."""

    def __init__(self, workers: list[_Worker], order: list[str]) -> None:
        self.workers = {w.name: w for w in workers}
        self._order = order

    def of(self, model: str | None) -> list[_Worker]:
        return list(self.workers.values())

    @asynccontextmanager
    async def slot(self, exclude: set[str], timeout: float | None, *_: object) -> AsyncIterator[_Worker]:
        yield self.workers[self._order.pop(0)]


class _Context:
    def time_remaining(self) -> float | None:
        return None


def _run(fleet: _Fleet, seconds: float) -> list[pb.TranscribeWithProgressResponse]:
    source = Source(bytes(int(seconds * 16000) * 2), pb.AUDIO_ENCODING_LINEAR16, 16000, 1)
    pipeline = Pipeline(
        source,
        pb.RecognitionOptions(),
        fleet,  # type: ignore[arg-type]
        fleet,  # type: ignore[arg-type]
        Settings.from_env({}),
        _Context(),
        RequestLine("Upload", "r1"),
    )

    async def collect() -> list[pb.TranscribeWithProgressResponse]:
        return [r async for r in pipeline.reports()]

    return asyncio.run(asyncio.wait_for(collect(), 30))


def test_a_worker_lost_after_sending_a_pieces_result_does_not_send_the_piece_again() -> None:
    second_done = asyncio.Event()

    async def first_piece(_: pb.TranscribeWithProgressRequest) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        await second_done.wait()  # the head piece is still in progress while the second one's worker is lost
        yield pb.TranscribeWithProgressResponse(
            segments=[_segment("one", 1, 2)], result=pb.TranscribeResponse(language_code="en")
        )

    async def second_piece(_: pb.TranscribeWithProgressRequest) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        second_done.set()
        yield pb.TranscribeWithProgressResponse(
            segments=[_segment("two", 1, 2)], result=pb.TranscribeResponse(language_code="en")
        )
        raise _unavailable()  # the stream breaks after the result: nothing of the piece is missing

    a = _Worker("a", [first_piece])
    b = _Worker("b", [second_piece])
    reports = _run(_Fleet([a, b], ["a", "b"]), 60)

    result = reports[-1].result
    assert [s.text for s in result.segments] == ["one", "two"]
    assert [s.id for s in result.segments] == [0, 1]
    assert len(a.calls) == 1 and len(b.calls) == 1, (a.calls, b.calls)


def test_a_worker_lost_mid_piece_resends_only_the_audio_after_the_released_segments() -> None:
    async def lost(_: pb.TranscribeWithProgressRequest) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        yield pb.TranscribeWithProgressResponse(segments=[_segment("one", 1, 10)], processed_audio=_seconds(10))
        raise _unavailable()

    async def again(request: pb.TranscribeWithProgressRequest) -> AsyncIterator[pb.TranscribeWithProgressResponse]:
        yield pb.TranscribeWithProgressResponse(
            segments=[_segment("two", 1, 2)], result=pb.TranscribeResponse(language_code="en")
        )

    a = _Worker("a", [lost])
    b = _Worker("b", [again])
    reports = _run(_Fleet([a, b], ["a", "b"]), 20)  # one piece

    result = reports[-1].result
    assert [s.text for s in result.segments] == ["one", "two"]
    assert result.segments[1].start_offset.seconds == 11  # the retry's times are moved to where it started
    assert b.calls == [pytest.approx(a.calls[0] - 10, abs=0.01)]
