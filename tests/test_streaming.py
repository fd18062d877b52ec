"""StreamingTranscribe through the gateway at real-time pace."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import error_reason
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import read_wav, stream_requests, words_of


def test_stream_gives_interim_results_before_finals(serving_fleet: Fleet) -> None:
    pcm, rate, _ = read_wav("speech_long.wav")
    results = []
    for response in serving_fleet.transcription.StreamingTranscribe(
        stream_requests(
            pcm,
            rate,
            pace=1.0,
            interim_results=True,
            options=pb.RecognitionOptions(enable_word_time_offsets=True),
        ),
        timeout=120,
    ):
        assert response.worker_id in {"gpu_worker_00", "gpu_worker_01"}
        results.extend(response.results)
    kinds = ["final" if r.is_final else "interim" for r in results]
    assert "interim" in kinds and "final" in kinds
    assert kinds.index("interim") < kinds.index("final")
    assert all(r.stability < 1 for r in results if not r.is_final)
    assert all(r.stability == 1 for r in results if r.is_final)
    final_text = " ".join(r.alternatives[0].transcript for r in results if r.is_final)
    words = words_of(final_text)
    for expected in ["morning", "weather", "sunny", "night", "remember", "coat"]:
        assert expected in words, final_text
    # Word times run forward across the whole stream.
    starts = [w.start_offset.ToNanoseconds() for r in results if r.is_final for w in r.alternatives[0].words]
    assert starts == sorted(starts) and len(starts) >= 15


def _stream_error(fleet: Fleet, requests: list[pb.StreamingTranscribeRequest]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(fleet.transcription.StreamingTranscribe(iter(requests), timeout=30))
    return info.value


def test_audio_before_config_is_invalid_argument(serving_fleet: Fleet) -> None:
    err = _stream_error(serving_fleet, [pb.StreamingTranscribeRequest(audio_content=b"\0\0" * 1600)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err.trailing_metadata()) == "CONFIG_NOT_FIRST"


def test_config_twice_is_invalid_argument(serving_fleet: Fleet) -> None:
    config = pb.StreamingTranscribeRequest(
        streaming_config=pb.StreamingConfig(encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
    )
    err = _stream_error(serving_fleet, [config, pb.StreamingTranscribeRequest(audio_content=b"\0\0" * 1600), config])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err.trailing_metadata()) == "CONFIG_TWICE"


def test_unsupported_sample_rate_is_invalid_argument(serving_fleet: Fleet) -> None:
    config = pb.StreamingTranscribeRequest(
        streaming_config=pb.StreamingConfig(encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=12345)
    )
    err = _stream_error(serving_fleet, [config])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "12345" in err.details()
