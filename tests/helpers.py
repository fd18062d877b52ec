"""Helpers shared by the tests: clips, waiting, streaming request generators."""

from __future__ import annotations

import io
import socket
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

from services.gen import transcription_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


#: What tests/data/make_clips.sh had espeak-ng say in each clip.
SAID = {
    "speech_short.wav": "The quick brown fox jumps over the lazy dog.",
    "speech_long.wav": "Good morning everyone. Today we talk about the weather. It will be sunny in the morning and "
    "cold at night. Please remember to bring a warm coat tomorrow.",
    "speech_paragraph.ogg": "Streaming speech recognition turns live audio into text while the speaker is still "
    "talking. Each word appears first as a guess, and becomes final once the system is sure of it. Final words "
    "never change, so captions can be shown at once. The service cuts its audio buffer at the end of each "
    "sentence, which keeps every decode equally fast, even after an hour.",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(address: str) -> bool:
    """True once something accepts TCP connections on HOST:PORT."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def clip(name: str) -> bytes:
    return (DATA / name).read_bytes()


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?;:'\"").lower() for w in text.split() if w.strip(".,!?;:'\"")]


def stream_requests(
    pcm: bytes, sample_rate: int, chunk_s: float = 0.1, pace: float = 1.0, channels: int = 1, **config: Any
) -> Iterator[pb.StreamingTranscribeRequest]:
    """Config, then LINEAR16 chunks paced at `pace` times real time (0: no pacing)."""
    yield pb.StreamingTranscribeRequest(
        streaming_config=pb.StreamingConfig(
            encoding=pb.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=sample_rate,
            audio_channel_count=channels,
            **config,
        )
    )
    step = int(chunk_s * sample_rate) * 2 * channels
    started = time.monotonic()
    for i in range(0, len(pcm), step):
        if pace:
            delay = started + (i / (2 * channels * sample_rate)) / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield pb.StreamingTranscribeRequest(audio_content=pcm[i : i + step])


def read_wav(name: str) -> tuple[bytes, int, int]:
    with wave.open(str(DATA / name)) as w:
        return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()


def repeated_wav(name: str, times: int) -> bytes:
    """A WAV of a committed clip played `times` times over: long audio without a large file in git."""
    pcm, rate, channels = read_wav(name)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm * times)
    return out.getvalue()


def speech_recording(seconds: float, gap_s: float = 2.0) -> bytes:
    """A 16 kHz mono WAV of about `seconds`: the committed clips in turn, each followed by `gap_s` of silence.

    Real speech with known words ("good morning", "quick brown fox", "streaming speech recognition"),
    long enough for any test, built with numpy in well under a second.
    """
    import numpy as np

    from services.common.audio import decode_container

    long_pcm, _, _ = read_wav("speech_long.wav")
    short_pcm, _, _ = read_wav("speech_short.wav")
    paragraph = (decode_container(clip("speech_paragraph.ogg"), 60) * 32767).astype("<i2")
    gap = np.zeros(int(gap_s * 16_000), dtype="<i2")
    block = np.concatenate([np.frombuffer(long_pcm, "<i2"), gap, paragraph, gap, np.frombuffer(short_pcm, "<i2"), gap])
    samples = np.resize(block, int(seconds * 16_000))  # the block over and over, cut at `seconds`
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def wer(reference: str, hypothesis: str) -> float:
    """WER in percent after Whisper's English normaliser."""
    normal = EnglishTextNormalizer()
    return 100.0 * float(jiwer.wer(normal(reference), normal(hypothesis)))


def stop_process(popen: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
