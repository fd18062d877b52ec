"""Transcribe through the gateway: real supervisord, real workers, real faster-whisper on committed clips."""

from __future__ import annotations

import grpc
import pytest

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import clip, read_wav, wait_for, words_of

EXPECTED = ["quick", "brown", "fox", "over", "the", "lazy", "dog"]


@pytest.mark.parametrize(
    "name", ["speech_short.wav", "speech_short.flac", "speech_short.ogg", "speech_short_44k_stereo.wav"]
)
def test_transcribe_containers_return_the_spoken_words(serving_fleet: Fleet, name: str) -> None:
    response = serving_fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=clip(name)), timeout=60)
    assert all(word in words_of(response.transcript) for word in EXPECTED), response.transcript
    assert response.worker_id in {"gpu_worker_00", "gpu_worker_01"}
    assert response.language_code == "en"
    assert 3.3 < response.audio_duration.ToNanoseconds() / 1e9 < 3.6
    assert response.processing_time.ToNanoseconds() > 0
    assert len(response.request_id) >= 8


def test_linear16_with_word_offsets(serving_fleet: Fleet) -> None:
    pcm, rate, channels = read_wav("speech_short_44k_stereo.wav")
    request = pb.TranscribeRequest(
        audio_content=pcm,
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=rate,
        audio_channel_count=channels,
        options=pb.RecognitionOptions(enable_word_time_offsets=True, language_code="en-US"),
    )
    response = serving_fleet.transcription.Transcribe(request, timeout=60)
    words = [w for s in response.segments for w in s.words]
    assert [w.word.strip(".").lower() for w in words][-3:] == ["the", "lazy", "dog"]
    starts = [w.start_offset.ToNanoseconds() for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w.probability <= 1 for w in words)
    assert all(w.end_offset.ToNanoseconds() >= w.start_offset.ToNanoseconds() for w in words)


def test_silence_gives_no_words(serving_fleet: Fleet) -> None:
    response = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=clip("silence.wav"), options=pb.RecognitionOptions(vad_filter=True)),
        timeout=60,
    )
    assert response.transcript == ""


def test_request_id_from_client_is_kept(serving_fleet: Fleet) -> None:
    response = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=clip("speech_short.flac")),
        metadata=(("x-request-id", "test-req-42"),),
        timeout=60,
    )
    assert response.request_id == "test-req-42"
    log = serving_fleet.run_dir / "logs" / "gateway.log"
    # supervisord copies the gateway's output into the file on its own schedule: give it a moment.
    assert wait_for(lambda: '"request_id": "test-req-42"' in log.read_text(), 10), log.read_text()[-2000:]


def test_get_config_describes_model_and_limits(serving_fleet: Fleet) -> None:
    config = serving_fleet.transcription.GetConfig(pb.GetConfigRequest(), timeout=10)
    assert config.model.startswith("tiny.en")
    assert config.engine.startswith("faster-whisper")
    assert config.device == "cpu"
    assert config.compute_type == "int8"
    assert list(config.language_codes) == ["en"]
    assert 16000 in config.sample_rates_hertz and 48000 in config.sample_rates_hertz
    assert config.worker_count == 2
    assert config.limits.max_beam_size >= 5


def test_requests_are_spread_over_both_workers(serving_fleet: Fleet) -> None:
    import concurrent.futures

    request = pb.TranscribeRequest(audio_content=clip("speech_short.flac"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: serving_fleet.transcription.Transcribe(request, timeout=60), range(4)))
    assert {r.worker_id for r in responses} == {"gpu_worker_00", "gpu_worker_01"}


def test_unreachable_gateway_is_unavailable_not_a_hang() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        from services.gen import transcription_pb2_grpc

        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetConfig(pb.GetConfigRequest(), timeout=2)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
