"""Bad input gets a clear status with an ErrorInfo reason; no worker dies."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import error_reason
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import clip

CASES = [
    (
        "garbage",
        pb.TranscribeRequest(audio_content=b"this is not audio" * 100),
        "INVALID_ARGUMENT",
        "UNDECODABLE_AUDIO",
    ),
    ("empty", pb.TranscribeRequest(audio_content=b""), "INVALID_ARGUMENT", "EMPTY_AUDIO"),
    (
        "truncated",
        pb.TranscribeRequest(audio_content=clip("speech_short.flac")[:200]),
        "INVALID_ARGUMENT",
        None,
    ),
    (
        "bad rate",
        pb.TranscribeRequest(audio_content=b"\0\0" * 100, encoding=pb.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=7),
        "INVALID_ARGUMENT",
        "UNSUPPORTED_SAMPLE_RATE",
    ),
    (
        "8 channels",
        pb.TranscribeRequest(
            audio_content=b"\0\0" * 1600,
            encoding=pb.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=16000,
            audio_channel_count=8,
        ),
        "INVALID_ARGUMENT",
        "UNSUPPORTED_CHANNEL_COUNT",
    ),
    (
        "unknown language",
        pb.TranscribeRequest(
            audio_content=clip("speech_short.flac"), options=pb.RecognitionOptions(language_code="xx")
        ),
        "INVALID_ARGUMENT",
        "UNSUPPORTED_LANGUAGE",
    ),
    (
        "absurd beam",
        pb.TranscribeRequest(audio_content=clip("speech_short.flac"), options=pb.RecognitionOptions(beam_size=100000)),
        "INVALID_ARGUMENT",
        "BEAM_SIZE_TOO_LARGE",
    ),
    (
        "huge prompt",
        pb.TranscribeRequest(
            audio_content=clip("speech_short.flac"),
            options=pb.RecognitionOptions(initial_prompt="x" * 100000),
        ),
        "INVALID_ARGUMENT",
        "INITIAL_PROMPT_TOO_LONG",
    ),
]


def _pids(fleet: Fleet) -> dict[str, int]:
    return {name: w.supervisor_pid for name, w in fleet.workers().items()}


@pytest.mark.parametrize(("label", "request_", "code", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_transcribe_input(
    serving_fleet: Fleet, label: str, request_: pb.TranscribeRequest, code: str, reason: str | None
) -> None:
    before = _pids(serving_fleet)
    with pytest.raises(grpc.RpcError) as info:
        serving_fleet.transcription.Transcribe(request_, timeout=30)
    err = info.value
    assert err.code().name == code, err.details()
    assert err.details()
    found = error_reason(err.trailing_metadata())
    assert found is not None
    if reason:
        assert found == reason
    # Both workers are still the same processes and still serving.
    assert _pids(serving_fleet) == before
    assert serving_fleet.serving() == {"gpu_worker_00", "gpu_worker_01"}


def test_garbage_does_not_disturb_a_good_request(serving_fleet: Fleet) -> None:
    bad = pb.TranscribeRequest(audio_content=b"\xff" * 5000)
    good = pb.TranscribeRequest(audio_content=clip("speech_short.flac"))
    future = serving_fleet.transcription.Transcribe.future(good, timeout=60)
    for _ in range(5):
        with pytest.raises(grpc.RpcError):
            serving_fleet.transcription.Transcribe(bad, timeout=30)
    assert "fox" in future.result().transcript.lower()
