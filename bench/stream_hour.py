"""A long synthetic stream fed straight to one StreamingSession, faster than real time.

Looped speech and silence go through the same steps the worker takes for each chunk (voice activity,
finalizing ended utterances, decodes when due). Per stretch of stream time it records the cost of a
chunk, the cost of a decode, the longest buffer and the process's resident memory: all must stay flat
however long the stream runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.common.config import Settings
from services.gpu_worker.batching.scheduler import BatchScheduler
from services.gpu_worker.batching.transcriber import Transcriber
from services.gpu_worker.engines.base import DecodeOptions
from services.gpu_worker.engines.faster_whisper_engine import FasterWhisperEngine
from services.gpu_worker.streaming.session import SessionConfig, StreamingSession

CHUNK_S = 0.1


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Stretch:
    """One stretch of stream time."""

    until_min: float
    chunks: int = 0
    chunk_s: float = 0.0
    decodes: int = 0
    decode_s: float = 0.0
    longest_buffer_s: float = 0.0
    words: int = 0
    rss_mib: float = 0.0


def run(minutes: float, speech: np.ndarray, silence_s: float, stretch_min: float, threads: int) -> list[Stretch]:
    settings = Settings.from_env({"SCRIBE_ENV_FILE": "/nonexistent", "WHISPER_CPU_THREADS": str(threads)})
    engine = FasterWhisperEngine(settings)
    scheduler = BatchScheduler(engine, settings.worker_batch_size, settings.batch_window_ms / 1000)
    session = StreamingSession(Transcriber(scheduler), DecodeOptions(), SessionConfig())
    cycle = np.concatenate([speech, np.zeros(round(silence_s * SAMPLE_RATE), dtype=np.float32)])
    step = round(CHUNK_S * SAMPLE_RATE)
    total = round(minutes * 60 * SAMPLE_RATE)
    stretches = [Stretch(until_min=stretch_min)]
    position = 0
    while position < total:
        at = position % cycle.size
        chunk = cycle[at : at + step]
        started = time.perf_counter()
        decodes, decode_s, words = session.decodes, session.decode_seconds, session.committed_count
        session.add_audio(chunk)
        while True:  # as the worker does: every deciding decode where it falls due, then an interim
            session.detect()
            if session.pending_decode() is None:
                break
            session.process()
        if session.interim_due() and (request := session.prepare_interim()) is not None:
            session.interim_update(request, session.decode_interim(request))
        current = stretches[-1]
        current.chunks += 1
        current.chunk_s += time.perf_counter() - started
        current.decodes += session.decodes - decodes
        current.decode_s += session.decode_seconds - decode_s
        current.words += session.committed_count - words
        current.longest_buffer_s = max(current.longest_buffer_s, session.buffer_seconds)
        position += chunk.size
        if position >= current.until_min * 60 * SAMPLE_RATE and position < total:
            current.rss_mib = rss_mib()
            stretches.append(Stretch(until_min=current.until_min + stretch_min))
    session.finish()
    stretches[-1].rss_mib = rss_mib()
    stretches[-1].until_min = minutes
    return stretches
