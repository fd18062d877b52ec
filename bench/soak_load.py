"""The soak's traffic, through the Python client library: live streams and unary calls in loops.

Every call is recorded with what it returned, so the checks (bench/soak_checks.py) can hold each one
against an undisturbed run of the same audio.
"""

from __future__ import annotations

import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from scribe_client import ScribeClient, StreamConfig, TranscribeOptions
from scribe_client.gen import transcription_pb2 as pb

from services.common.audio import decode_container

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
RATE = 16_000
STREAM_OPTIONS = TranscribeOptions(word_timestamps=True)
#: Each call's deadline: generous, so that a failure is scribe's and not a deadline cut short by the chaos.
CALL_TIMEOUT_S = 180.0


def _pcm(name: str) -> bytes:
    with wave.open(str(DATA / name)) as w:
        return w.readframes(w.getnframes())


def stream_clips() -> list[bytes]:
    """LINEAR16 streams: 57.5 s of real read speech (tests/data/read_speech_lj001.ogg), and two of about
    17 s of synthetic speech (the committed espeak clips, in two orders). Stream loop i plays clip i % 3."""
    long, short = _pcm("speech_long.wav"), _pcm("speech_short.wav")
    gap = bytes(2 * int(1.5 * RATE))
    read = decode_container((DATA / "read_speech_lj001.ogg").read_bytes(), 3600)
    real = (np.clip(read, -1, 1) * 32767).astype("<i2").tobytes()
    return [real, long + gap + short + gap, short + gap + long + gap]


def unary_clips() -> dict[str, bytes]:
    """Method -> the WAV file it sends."""
    return {
        "Transcribe": (DATA / "speech_short.wav").read_bytes(),
        "TranscribeWithProgress": (DATA / "speech_long.wav").read_bytes(),
    }


@dataclass
class StreamRun:
    clip: int
    request_id: str
    finals: list[tuple[float, float, str]] = field(default_factory=list)  # result start, end, transcript
    words: list[tuple[float, float, str]] = field(default_factory=list)  # the finals' words: start, end, word
    workers: list[str] = field(default_factory=list)  # each worker that answered, in order
    error: str | None = None
    seconds: float = 0.0


@dataclass
class UnaryRun:
    method: str
    request_id: str
    text: str = ""
    error: str | None = None
    seconds: float = 0.0


def paced(pcm: bytes, pace: float, chunk_s: float = 0.1) -> Iterator[bytes]:
    """100 ms chunks at `pace` times real time, as a microphone would deliver them (0: as fast as they go)."""
    step = int(chunk_s * RATE) * 2
    started = time.monotonic()
    for i in range(0, len(pcm), step):
        delay = started + i / (2 * RATE) / pace - time.monotonic() if pace > 0 else 0.0
        if delay > 0:
            time.sleep(delay)
        yield pcm[i : i + step]


def _error(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def stream_once(client: ScribeClient, clip: int, pcm: bytes, pace: float, request_id: str) -> StreamRun:
    run = StreamRun(clip, request_id)
    started = time.monotonic()
    config = StreamConfig(options=STREAM_OPTIONS, interim_results=True)
    try:
        for response in client.stream(paced(pcm, pace), config, timeout=CALL_TIMEOUT_S, request_id=request_id):
            if response.worker_id and response.worker_id not in run.workers[-1:]:
                run.workers.append(response.worker_id)
            for result in response.results:
                if not result.is_final:
                    continue
                alt = result.alternatives[0]
                run.finals.append(
                    (
                        result.result_start_offset.ToNanoseconds() / 1e9,
                        result.result_end_offset.ToNanoseconds() / 1e9,
                        alt.transcript,
                    )
                )
                run.words.extend(
                    (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.word)
                    for w in alt.words
                )
    except grpc.RpcError as err:
        run.error = _error(err)
    run.seconds = time.monotonic() - started
    return run


def unary_once(client: ScribeClient, method: str, audio: bytes, request_id: str) -> UnaryRun:
    run = UnaryRun(method, request_id)
    started = time.monotonic()
    try:
        if method == "Transcribe":
            run.text = client.transcribe(audio, timeout=CALL_TIMEOUT_S, request_id=request_id).transcript
        else:
            reports = list(client.transcribe_with_progress(audio, timeout=CALL_TIMEOUT_S, request_id=request_id))
            run.error = progress_error(reports)
            run.text = reports[-1].result.transcript if reports else ""
    except grpc.RpcError as err:
        run.error = _error(err)
    run.seconds = time.monotonic() - started
    return run


def progress_error(reports: list[pb.TranscribeWithProgressResponse]) -> str | None:
    """What is wrong with a call's progress reports: the last must hold the result, percent never goes
    down, and the segments reported along the way must add up to the result's transcript."""
    if not reports or not reports[-1].HasField("result"):
        return "the last progress report held no result"
    percents = [r.progress_percent for r in reports]
    if percents != sorted(percents):
        return f"progress went down: {percents}"
    segments = " ".join(s.text.strip() for r in reports for s in r.segments)
    if segments.split() != reports[-1].result.transcript.split():
        return f"segments {segments!r} are not the result {reports[-1].result.transcript!r}"
    return None


@dataclass
class Load:
    """N stream loops and M unary loops against `address` until `stop()`; every call started is finished."""

    address: str
    streams: int
    clients: int
    pace: float = 1.0
    stream_runs: list[StreamRun] = field(default_factory=list)
    unary_runs: list[UnaryRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._stream_loop, args=(i,), name=f"stream-{i}", daemon=True)
            for i in range(self.streams)
        ] + [
            threading.Thread(target=self._unary_loop, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(self.clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
            time.sleep(0.3)  # staggered, so streams do not all pause and speak in step

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _stream_loop(self, index: int) -> None:
        clips = stream_clips()
        with ScribeClient(self.address, timeout=CALL_TIMEOUT_S) as client:
            while not self._stop.is_set():
                clip = index % len(clips)
                request_id = f"soak-stream-{index}-{len(self.stream_runs)}"
                self.stream_runs.append(stream_once(client, clip, clips[clip], self.pace, request_id))

    def _unary_loop(self, index: int) -> None:
        clips = unary_clips()
        methods = sorted(clips)
        turn = index
        with ScribeClient(self.address, timeout=CALL_TIMEOUT_S) as client:
            while not self._stop.is_set():
                method = methods[turn % len(methods)]
                turn += 1
                request_id = f"soak-{method}-{index}-{turn}"
                self.unary_runs.append(unary_once(client, method, clips[method], request_id))
