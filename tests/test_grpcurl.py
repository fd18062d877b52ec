"""What a grpcurl user does, with the real grpcurl binary and no proto files at hand."""

from __future__ import annotations

import base64
import json

from tests.conftest import Fleet
from tests.helpers import clip


def test_grpcurl_lists_services(serving_fleet: Fleet) -> None:
    out = serving_fleet.run("grpcurl", "-plaintext", serving_fleet.address, "list").stdout.split()
    for service in (
        "transcription.v1.TranscriptionService",
        "transcription.v1.FleetService",
        "grpc.health.v1.Health",
    ):
        assert service in out


def test_grpcurl_describe_shows_comments(serving_fleet: Fleet) -> None:
    out = serving_fleet.run(
        "grpcurl",
        "-plaintext",
        serving_fleet.address,
        "describe",
        "transcription.v1.TranscriptionService.Transcribe",
    ).stdout
    assert "rpc Transcribe" in out and "//" in out


def test_grpcurl_transcribe_with_json(serving_fleet: Fleet) -> None:
    body = {
        "audio_content": base64.b64encode(clip("speech_short.flac")).decode(),
        "options": {"enable_word_time_offsets": True},
    }
    out = serving_fleet.run(
        "grpcurl",
        "-plaintext",
        "-d",
        "@",
        serving_fleet.address,
        "transcription.v1.TranscriptionService/Transcribe",
        input=json.dumps(body),
    ).stdout
    response = json.loads(out)
    assert "lazy dog" in response["transcript"].lower()
    assert response["segments"][0]["words"][0]["startOffset"].endswith("s")


def test_grpcurl_health_check(serving_fleet: Fleet) -> None:
    out = serving_fleet.run("grpcurl", "-plaintext", serving_fleet.address, "grpc.health.v1.Health/Check").stdout
    assert json.loads(out)["status"] == "SERVING"


def test_grpcurl_list_workers(serving_fleet: Fleet) -> None:
    out = serving_fleet.run(
        "grpcurl", "-plaintext", serving_fleet.address, "transcription.v1.FleetService/ListWorkers"
    ).stdout
    workers = json.loads(out)["workers"]
    assert [w["name"] for w in workers] == ["gpu_worker_00", "gpu_worker_01"]
    assert all(w["routingState"] == "ROUTING_STATE_SERVING" for w in workers)
    assert all(w["health"]["deviceKind"] == "DEVICE_KIND_CPU" for w in workers)
    assert all("vramTotalBytes" not in w["health"] for w in workers)
