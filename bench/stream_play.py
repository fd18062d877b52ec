"""Live streams as a client plays them: real-time 100 ms chunks through the gateway, every result timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from bench.stream_metrics import Received
from services.common.audio import SAMPLE_RATE
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc

CHUNK_S = 0.1  # what a live client sends: 100 ms of audio, as soon as it has been captured


@dataclass
class StreamRun:
    """One stream as the client saw it."""

    request_id: str
    seconds: float
    results: list[Received] = field(default_factory=list)
    worker: str = ""
    end_lag: float = float("nan")  # from the end of the audio to the end of the call
    error: str = ""
    t0: float = 0.0  # time.monotonic() when the first chunk could have been captured

    @property
    def transcript(self) -> str:
        return " ".join(r.text for r in self.results if r.final)


def play(
    stub: transcription_pb2_grpc.TranscriptionServiceStub, audio: np.ndarray, request_id: str, model: str = ""
) -> StreamRun:
    """Stream 16 kHz audio in real time: each 100 ms chunk is sent once it would have been captured."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(CHUNK_S * SAMPLE_RATE) * 2
    run = StreamRun(request_id, audio.size / SAMPLE_RATE)

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(
            streaming_config=pb.StreamingConfig(
                encoding=pb.AUDIO_ENCODING_LINEAR16,
                sample_rate_hertz=SAMPLE_RATE,
                interim_results=True,
                options=pb.RecognitionOptions(enable_word_time_offsets=True, model=model),
            )
        )
        run.t0 = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            delay = run.t0 + (k + 1) * CHUNK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield pb.StreamingTranscribeRequest(audio_content=pcm[i : i + step])

    try:
        for response in stub.StreamingTranscribe(requests(), metadata=(("x-request-id", request_id),), timeout=7200):
            arrived = time.monotonic() - run.t0
            run.worker = response.worker_id
            for r in response.results:
                alt = r.alternatives[0]
                run.results.append(
                    Received(
                        arrived=arrived,
                        final=r.is_final,
                        start=r.result_start_offset.ToNanoseconds() / 1e9,
                        end=r.result_end_offset.ToNanoseconds() / 1e9,
                        text=alt.transcript,
                        words=[
                            (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.word)
                            for w in alt.words
                        ],
                    )
                )
    except grpc.RpcError as err:
        run.error = f"{err.code().name}: {err.details()}"
    run.end_lag = time.monotonic() - run.t0 - run.seconds
    return run


def concurrently(
    jobs: list[tuple[np.ndarray, str]], stub: transcription_pb2_grpc.TranscriptionServiceStub
) -> list[StreamRun]:
    runs: list[StreamRun | None] = [None] * len(jobs)

    def worker(i: int) -> None:
        runs[i] = play(stub, *jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in runs if r is not None]
