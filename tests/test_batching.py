"""Batched decoding in real workers (embedded tiny.en): the words of sequential decoding, windows of
concurrent calls and streams in shared batches, streams ahead of bulk work, cancellation, options."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from faster_whisper import WhisperModel

from services.common.audio import SAMPLE_RATE, decode_container
from services.gateway.recordings.shard import pcm16
from services.gen import transcription_pb2 as pb
from services.gpu_worker.engines.faster_whisper_engine import resolve_model
from tests.conftest import Fleet
from tests.helpers import clip, read_wav, stream_requests, wer, words_of

# What tests/data/make_clips.sh had espeak-ng say.
PARAGRAPH = (
    "Streaming speech recognition turns live audio into text while the speaker is still talking. "
    "Each word appears first as a guess, and becomes final once the system is sure of it. "
    "Final words never change, so captions can be shown at once. "
    "The service cuts its audio buffer at the end of each sentence, which keeps every decode equally fast, "
    "even after an hour."
)
WEATHER = (
    "Good morning everyone. Today we talk about the weather. It will be sunny in the morning and cold at night. "
    "Please remember to bring a warm coat tomorrow."
)
FOX = "The quick brown fox jumps over the lazy dog."


def recording() -> tuple[np.ndarray, str]:
    """About 100 s of speech with pauses of 0.5 to 6 s: several windows, cut at silences."""
    paragraph = decode_container(clip("speech_paragraph.ogg"), 60)
    weather = decode_container(clip("speech_long.wav"), 60)
    fox = decode_container(clip("speech_short.wav"), 60)
    parts, text = [], []
    for i, (audio, said) in enumerate([(weather, WEATHER), (paragraph, PARAGRAPH), (fox, FOX)] * 2):
        parts += [audio, np.zeros(round((0.5 + 1.1 * i) * SAMPLE_RATE), dtype=np.float32)]
        text.append(said)
    return np.concatenate(parts), " ".join(text)


def linear16(audio: np.ndarray, **options: object) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(
        audio_content=pcm16(audio),
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=SAMPLE_RATE,
        options=pb.RecognitionOptions(**options),  # type: ignore[arg-type]
    )


def batch_totals(fleet: Fleet) -> tuple[int, int]:
    """(windows decoded, batches holding windows of several calls), summed over the workers."""
    workers = fleet.workers().values()
    return sum(w.health.batch.windows_decoded for w in workers), sum(w.health.batch.mixed_batches for w in workers)


def test_batched_recording_has_the_words_of_sequential_decoding(serving_fleet: Fleet) -> None:
    audio, said = recording()
    response = serving_fleet.transcription.Transcribe(linear16(audio, enable_word_time_offsets=True), timeout=120)

    model = WhisperModel(resolve_model("embedded")[0], device="cpu", compute_type="int8", cpu_threads=1)
    segments, _ = model.transcribe(audio, beam_size=5)
    sequential = " ".join(s.text.strip() for s in segments)
    assert wer(said, response.transcript) <= wer(said, sequential) + 0.5, (response.transcript, sequential)

    words = [(w, s) for s in response.segments for w in s.words]
    assert len(words) >= 0.9 * len(words_of(said))
    starts = [w.start_offset.ToNanoseconds() for w, _ in words]
    assert starts == sorted(starts)
    for word, segment in words:
        assert segment.start_offset.ToNanoseconds() <= word.start_offset.ToNanoseconds()
        assert word.end_offset.ToNanoseconds() <= segment.end_offset.ToNanoseconds()
        assert word.start_offset.ToNanoseconds() <= word.end_offset.ToNanoseconds()
    assert response.segments[-1].end_offset.ToNanoseconds() <= round(audio.size / SAMPLE_RATE * 1e9)


def test_concurrent_calls_and_a_stream_share_batches(serving_fleet: Fleet) -> None:
    _, mixed_before = batch_totals(serving_fleet)
    request = pb.TranscribeRequest(audio_content=clip("speech_long.wav"))
    pcm, rate, _ = read_wav("speech_long.wav")
    stream_finals: list[str] = []

    def stream() -> None:
        call = serving_fleet.transcription.StreamingTranscribe(stream_requests(pcm, rate, pace=4.0), timeout=120)
        stream_finals.extend(r.alternatives[0].transcript for resp in call for r in resp.results if r.is_final)

    streamer = threading.Thread(target=stream)
    streamer.start()
    futures = [serving_fleet.transcription.Transcribe.future(request, timeout=120) for _ in range(8)]
    results = [f.result() for f in futures]
    streamer.join(60)
    assert all("coat" in words_of(r.transcript) for r in results)
    assert "coat" in words_of(" ".join(stream_finals))
    _, mixed_after = batch_totals(serving_fleet)
    assert mixed_after > mixed_before, "no batch held windows of two calls"


@pytest.mark.heavy  # minutes of audio: make test-heavy
def test_a_stream_gets_its_finals_while_long_recordings_are_decoded(serving_fleet: Fleet) -> None:
    audio, _ = recording()
    bulk: list[grpc.Future] = []
    pcm, rate, _ = read_wav("speech_short.wav")
    heard = threading.Event()  # the stream's first interim result: its windows are in the worker's scheduler

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        last = len(pcm) // (int(0.1 * rate) * 2)
        for i, request in enumerate(stream_requests(pcm, rate, pace=1.0, interim_results=True)):
            if not bulk and (heard.is_set() or i >= last):
                bulk.extend(
                    serving_fleet.transcription.Transcribe.future(linear16(audio), timeout=180) for _ in range(8)
                )
            yield request

    call = serving_fleet.transcription.StreamingTranscribe(requests(), timeout=180)
    finals, bulk_done_at_final = [], []
    for response in call:
        if response.results:
            heard.set()
        for result in response.results:
            if result.is_final:
                finals.append(result.alternatives[0].transcript)
                bulk_done_at_final.append(sum(f.done() for f in bulk))
    assert "dog" in words_of(" ".join(finals))  # streamed: "fox" only at a 30 s encode (tests/test_streaming.py)
    # Bulk windows wait behind a stream's decodes, never the other way round: the stream's last final
    # came while the recordings (13 minutes of audio, several windows on each worker, decoded in small
    # batches beside a live stream) were still being decoded.
    assert len(bulk) == 8 and bulk_done_at_final and bulk_done_at_final[-1] < len(bulk), bulk_done_at_final
    assert all("coat" in words_of(f.result().transcript) for f in bulk)


def test_cancelling_one_call_leaves_its_batch_mates_whole(serving_fleet: Fleet) -> None:
    audio, _ = recording()
    request = linear16(audio)
    calls = [serving_fleet.transcription.Transcribe.future(request, timeout=180) for _ in range(3)]
    time.sleep(1.0)  # the three calls' windows are in the workers' queues
    calls[1].cancel()
    for future in (calls[0], calls[2]):
        said = words_of(future.result().transcript)
        # Every sentence of the recording, each as often as it was said: no window lost with the
        # cancelled call's. (Which words tiny.en gets right on this synthetic voice is not the point.)
        assert [said.count(w) for w in ("weather", "coat", "hour", "lazy")] == [2, 2, 2, 2], said
    assert calls[1].cancelled() or calls[1].exception().code() == grpc.StatusCode.CANCELLED


def test_calls_with_different_options_all_succeed(serving_fleet: Fleet) -> None:
    audio = decode_container(clip("speech_long.wav"), 60)
    variants: list[dict[str, object]] = [
        {"beam_size": 1},
        {"beam_size": 5, "enable_word_time_offsets": True},
        {"beam_size": 2},
        {"initial_prompt": "A weather forecast for tomorrow."},
        {"task": pb.TASK_TRANSCRIBE, "language_code": "en"},
    ]
    futures = [serving_fleet.transcription.Transcribe.future(linear16(audio, **v), timeout=120) for v in variants]
    for variant, future in zip(variants, futures, strict=True):
        response = future.result()
        assert {"weather", "coat"} <= set(words_of(response.transcript)), (variant, response.transcript)
        assert bool(response.segments[0].words) == bool(variant.get("enable_word_time_offsets"))
