"""Several models in one fleet, for real: supervisord with a group for tiny.en and one for base
(WORKER_MODELS=tiny.en:1,base:1), routing by model on gRPC and HTTP, a model whose workers are stopped or
scaled to 0, `scribe scale base=2` live; language detection, restricted detection and translation on the
multilingual model with the committed espeak-ng clips (tests/data/make_language_clips.sh)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.errors import error_reason
from services.gen import fleet_pb2
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet, running_fleet
from tests.helpers import DATA, clip, read_wav, stream_requests, wait_for, words_of

TINY = "gpu_worker_tiny.en"
BASE = "gpu_worker_base"


@pytest.fixture(scope="module")
def models_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(
        tmp_path_factory.mktemp("models"), WORKER_MODELS="tiny.en:1,base:1", STREAM_FAILOVER_WAIT_S="3"
    ) as f:
        yield f


def groups(fleet: Fleet) -> dict[str, str]:
    """Worker name -> supervisord group, from `supervisorctl status`."""
    out = {}
    for row in fleet.supervisorctl("status").stdout.splitlines():
        full = row.split()[0] if row.strip() else ""
        group, _, name = full.partition(":")
        if name.startswith("gpu_worker_"):
            out[name] = group
    return out


def transcribe(fleet: Fleet, name: str, **options: object) -> pb.TranscribeResponse:
    request = pb.TranscribeRequest(audio_content=clip(name), options=pb.RecognitionOptions(**options))  # type: ignore[arg-type]
    response: pb.TranscribeResponse = fleet.transcription.Transcribe(request, timeout=120)
    return response


def serving_models(fleet: Fleet, timeout: float = 60) -> None:
    def up() -> bool:
        listed = fleet.fleet.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5)
        return all(m.serving_workers >= 1 for m in listed.models)

    assert wait_for(up, timeout, 0.2), fleet.workers()


def test_each_model_is_a_group_of_its_own(models_fleet: Fleet) -> None:
    assert groups(models_fleet) == {"gpu_worker_00": TINY, "gpu_worker_01": BASE}
    listed = models_fleet.fleet.ListWorkers(fleet_pb2.ListWorkersRequest(), timeout=5)
    assert {w.name: w.model for w in listed.workers} == {"gpu_worker_00": "tiny.en", "gpu_worker_01": "base"}
    assert [(m.name, m.is_default, m.serving_workers) for m in listed.models] == [
        ("tiny.en", True, 1),
        ("base", False, 1),
    ]
    status = models_fleet.scribe("status").stdout
    assert "models tiny.en (default) 1/1 serving; base 1/1 serving" in status, status
    config = models_fleet.transcription.GetConfig(pb.GetConfigRequest(), timeout=10)
    assert config.model == "tiny.en (embedded)" and not config.multilingual
    assert [(m.name, m.multilingual, m.is_default) for m in config.models] == [
        ("tiny.en", False, True),
        ("base", True, False),
    ]
    assert "de" in config.models[1].language_codes and config.models[0].language_codes == ["en"]
    base = models_fleet.transcription.GetConfig(pb.GetConfigRequest(model="base"), timeout=10)
    assert base.model == "base (embedded)" and base.multilingual and len(base.language_codes) >= 99
    text = urllib.request.urlopen(f"http://{models_fleet.metrics}/metrics", timeout=5).read().decode()
    assert 'scribe_worker_serving{model="base",worker="gpu_worker_01"} 1.0' in text, text
    assert 'scribe_model_workers_serving{model="tiny.en"} 1.0' in text


def test_calls_and_streams_go_to_their_model(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    for name in ("", "whisper-1", "embedded", "tiny.en"):
        response = transcribe(models_fleet, "speech_short.wav", model=name)
        assert response.worker_id == "gpu_worker_00", name
        assert "lazy" in response.transcript.lower()
    response = transcribe(models_fleet, "speech_short.wav", model="base")
    assert response.worker_id == "gpu_worker_01" and "lazy" in response.transcript.lower()
    progress = list(
        models_fleet.transcription.TranscribeWithProgress(
            pb.TranscribeWithProgressRequest(
                request=pb.TranscribeRequest(
                    audio_content=clip("german.ogg"), options=pb.RecognitionOptions(model="base")
                )
            ),
            timeout=120,
        )
    )
    assert progress[-1].result.worker_id == "gpu_worker_01" and progress[-1].result.language_code == "de"
    pcm, rate, _ = read_wav("speech_short.wav")
    for model, worker in (("base", "gpu_worker_01"), ("", "gpu_worker_00")):
        responses = list(
            models_fleet.transcription.StreamingTranscribe(
                stream_requests(pcm, rate, pace=0, options=pb.RecognitionOptions(model=model)), timeout=60
            )
        )
        finals = [r for x in responses for r in x.results if r.is_final]
        assert {x.worker_id for x in responses if x.results} == {worker}, model
        assert "lazy" in " ".join(r.alternatives[0].transcript for r in finals).lower()


def test_an_unknown_model_is_refused_with_the_models_served(models_fleet: Fleet) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        transcribe(models_fleet, "speech_short.wav", model="large-v9")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value.trailing_metadata()) == "UNKNOWN_MODEL"
    assert "tiny.en (default), base" in (caught.value.details() or "")
    pcm, rate, _ = read_wav("speech_short.wav")
    with pytest.raises(grpc.RpcError) as streamed:
        list(
            models_fleet.transcription.StreamingTranscribe(
                stream_requests(pcm, rate, pace=0, options=pb.RecognitionOptions(model="nope")), timeout=30
            )
        )
    assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _post(
    fleet: Fleet, path: str, fields: dict[str, str], audio: bytes, name: str
) -> tuple[int, dict[str, str], bytes]:
    boundary = uuid.uuid4().hex
    body = b""
    for key, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += audio + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://{fleet.http}{path}", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_http_names_the_model_and_translates_on_the_multilingual_one(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    listed = json.loads(urllib.request.urlopen(f"http://{models_fleet.http}/v1/models", timeout=10).read())
    assert [(m["id"], m["default"], m["multilingual"]) for m in listed["data"]] == [
        ("tiny.en", True, False),
        ("base", False, True),
    ]
    one = json.loads(urllib.request.urlopen(f"http://{models_fleet.http}/v1/models/base", timeout=10).read())
    assert one["id"] == "base" and one["serving_workers"] == 1

    def page_models() -> list[tuple[str, bool, int]]:
        status = json.loads(urllib.request.urlopen(f"http://{models_fleet.http}/api/status", timeout=10).read())
        return [(m["name"], m["default"], m["serving"]) for m in status.get("models", [])]

    assert wait_for(lambda: page_models() == [("tiny.en", True, 1), ("base", False, 1)], 10), page_models()
    german = (DATA / "german.ogg").read_bytes()
    status, headers, body = _post(
        models_fleet,
        "/v1/audio/transcriptions",
        {"model": "base", "response_format": "verbose_json"},
        german,
        "german.ogg",
    )
    assert status == 200, body
    assert headers["x-scribe-worker"] == "gpu_worker_01"
    verbose = json.loads(body)
    assert verbose["language"] == "de" and "morgen" in verbose["text"].lower()
    status, headers, body = _post(
        models_fleet, "/v1/audio/transcriptions", {"model": "whisper-1"}, clip("speech_short.wav"), "a.wav"
    )
    assert status == 200 and headers["x-scribe-worker"] == "gpu_worker_00" and b"lazy" in body.lower()
    # stream=true (server-sent events) goes to the model too, and refuses an unknown one before the 200.
    status, _, body = _post(
        models_fleet, "/v1/audio/transcriptions", {"model": "base", "stream": "true"}, german, "german.ogg"
    )
    assert status == 200 and b"morgen" in body.lower(), body
    status, _, body = _post(
        models_fleet, "/v1/audio/transcriptions", {"model": "nope", "stream": "true"}, german, "g.ogg"
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "unknown_model", body
    status, _, body = _post(models_fleet, "/v1/audio/translations", {"model": "base"}, clip("spanish.ogg"), "es.ogg")
    assert status == 200, body
    english = words_of(json.loads(body)["text"])
    assert {"park", "afternoon"} & set(english), english
    status, _, body = _post(
        models_fleet, "/v1/audio/translations", {"model": "whisper-1"}, clip("spanish.ogg"), "es.ogg"
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "translate_unsupported", body
    status, _, body = _post(models_fleet, "/v1/audio/transcriptions", {"model": "tiny"}, clip("spanish.ogg"), "es.ogg")
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "unknown_model" and error["param"] == "model", body


def test_language_detection_per_recording_and_per_window(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    for name, language in (("german.ogg", "de"), ("spanish.ogg", "es"), ("italian.ogg", "it")):
        response = transcribe(models_fleet, name, model="base")
        assert response.language_code == language, (name, response.language_code, response.transcript)
        assert response.language_probability > 0.5
        assert {s.language_code for s in response.segments} == {language}
    mixed = transcribe(models_fleet, "german_then_english.ogg", model="base")
    by_language = [(s.language_code, s.text) for s in mixed.segments]
    assert by_language[0][0] == "de" and by_language[-1][0] == "en", by_language
    assert "coat" in words_of(by_language[-1][1])
    # Restricted to two languages, the Spanish clip can only be one of them.
    restricted = transcribe(models_fleet, "spanish.ogg", model="base", language_code="fr,de")
    assert restricted.language_code in ("fr", "de")
    fixed = transcribe(models_fleet, "german.ogg", model="base", language_code="de-DE")
    assert fixed.language_code == "de" and fixed.language_probability == 1.0
    translated = transcribe(models_fleet, "german.ogg", model="base", task=pb.TASK_TRANSLATE)
    assert {"morning", "park"} <= set(words_of(translated.transcript)), translated.transcript
    # The English-only model keeps its refusals.
    for options in ({"task": pb.TASK_TRANSLATE}, {"language_code": "de"}, {"language_code": "en,de"}):
        with pytest.raises(grpc.RpcError) as caught:
            transcribe(models_fleet, "german.ogg", **options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, options


def test_cli_transcribes_and_translates_with_a_model(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    out = models_fleet.scribe(
        "transcribe", "--address", models_fleet.address, "--model", "base", "--translate", str(DATA / "german.ogg")
    )
    assert "morning" in out.stdout.lower(), out.stdout + out.stderr
    assert "gpu_worker_01" in out.stderr


def test_a_model_with_no_serving_worker_is_unavailable_while_the_other_serves(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    models_fleet.supervisorctl("stop", f"{BASE}:*")
    try:
        assert wait_for(lambda: models_fleet.serving() == {"gpu_worker_00"}, 10)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            transcribe(models_fleet, "speech_short.wav", model="base")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value.trailing_metadata()) == "MODEL_NOT_SERVING"
        assert "base" in (caught.value.details() or "") and time.monotonic() - started < 15
        assert transcribe(models_fleet, "speech_short.wav").worker_id == "gpu_worker_00"
    finally:
        models_fleet.supervisorctl("start", f"{BASE}:*")
    serving_models(models_fleet)


def test_scale_one_model_live_and_to_zero_and_back(models_fleet: Fleet) -> None:
    serving_models(models_fleet)
    up = models_fleet.scribe("scale", "base=2")
    assert "2 workers of base" in up.stderr, up.stderr
    assert wait_for(lambda: {"gpu_worker_01", "gpu_worker_02"} <= models_fleet.serving(), 60), models_fleet.workers()
    assert groups(models_fleet)["gpu_worker_02"] == f"{BASE}_02"
    assert models_fleet.workers()["gpu_worker_02"].model == "base"
    served = {transcribe(models_fleet, "speech_short.wav", model="base").worker_id for _ in range(4)}
    assert served <= {"gpu_worker_01", "gpu_worker_02"}
    env = Path(models_fleet.env["SCRIBE_ENV_FILE"])
    assert "WORKER_MODELS=tiny.en:1,base:2" in env.read_text()

    models_fleet.scribe("scale", "base=0")
    assert wait_for(lambda: not any(w.model == "base" for w in models_fleet.workers().values()), 10)
    assert not any(g.startswith(BASE) for g in groups(models_fleet).values())
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        transcribe(models_fleet, "speech_short.wav", model="base")
    assert error_reason(caught.value.trailing_metadata()) == "MODEL_NOT_SERVING"
    assert time.monotonic() - started < 2  # no worker at all: nothing to wait for
    assert transcribe(models_fleet, "speech_short.wav").worker_id == "gpu_worker_00"
    assert "WORKER_MODELS=tiny.en:1,base:0" in env.read_text()

    models_fleet.scribe("scale", "base=1")
    serving_models(models_fleet)
    assert transcribe(models_fleet, "german.ogg", model="base").language_code == "de"
