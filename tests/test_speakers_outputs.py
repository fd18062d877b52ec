"""Speaker labels in every output: SRT, WebVTT and JSON parsed by independent libraries, OpenAI's
diarized_json read by the `openai` package (known speakers as data URLs), and `scribe transcribe --speakers`."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
import srt
import webvtt
from scribe_client import render

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.speakers_data import SPEAKERS, conversation
from tests.test_http import _client, http  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
def labelled(fleet: Fleet) -> pb.TranscribeResponse:
    audio, _ = conversation("two_voices")
    options = pb.RecognitionOptions(enable_word_time_offsets=True, diarization_config=pb.SpeakerDiarizationConfig())
    return fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=audio, options=options), timeout=120)


def test_srt_vtt_and_json_carry_the_speakers(labelled: pb.TranscribeResponse) -> None:
    spoken = [s for s in labelled.segments if s.text.strip()]
    cues = list(srt.parse(render(labelled, "srt")))
    assert [c.content.split(": ", 1)[0] for c in cues] == [f"Speaker {s.speaker_label}" for s in spoken]
    assert {c.content.split(": ", 1)[0] for c in cues} == {"Speaker 1", "Speaker 2"}
    captions = webvtt.from_buffer(io.StringIO(render(labelled, "vtt"))).captions
    assert [c.voice for c in captions] == [f"Speaker {s.speaker_label}" for s in spoken]
    assert [c.text for c in captions] == [" ".join(s.text.split()) for s in spoken]
    body = json.loads(render(labelled, "json"))
    assert [s["speaker"] for s in body["segments"]] == [s.speaker_label for s in labelled.segments]
    assert all(w["speaker"] == s["speaker"] for s in body["segments"] for w in s["words"])
    assert [p["speaker"] for p in body["speakers"]] == ["1", "2"] and all(
        p["speaking_time"] > 5 for p in body["speakers"]
    )
    assert render(labelled, "txt").splitlines()[0].startswith("Speaker 1: ")


def test_http_diarized_json_with_a_known_speaker_reads_with_the_openai_package(http: str) -> None:  # noqa: F811
    audio, _ = conversation("two_voices")
    reference = "data:audio/ogg;base64," + base64.b64encode((SPEAKERS / "known_B.ogg").read_bytes()).decode()
    result = _client(http).audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("two_voices.ogg", audio),
        response_format="diarized_json",
        known_speaker_names=["Bob"],
        known_speaker_references=[reference],
    )
    assert isinstance(result, openai.types.audio.TranscriptionDiarized)
    assert result.task == "transcribe" and result.duration > 30
    speakers = [s.speaker for s in result.segments]
    assert set(speakers) == {"A", "Bob"} and speakers[0] == "A"  # OpenAI's letters for unknown voices
    assert all(s.type == "transcript.text.segment" and s.end > s.start for s in result.segments)
    assert " ".join(s.text for s in result.segments).split() == result.text.split()


def test_http_refuses_a_reference_that_is_not_a_data_url(http: str) -> None:  # noqa: F811
    audio, _ = conversation("two_voices")
    with pytest.raises(openai.BadRequestError) as caught:
        _client(http).audio.transcriptions.create(
            model="whisper-1",
            file=("two_voices.ogg", audio),
            response_format="diarized_json",
            known_speaker_names=["Bob"],
            known_speaker_references=["https://example.invalid/bob.wav"],
        )
    assert caught.value.body["param"] == "known_speaker_references[]"  # type: ignore[index]


def test_cli_transcribe_with_speakers_prints_them(serving_fleet: Fleet) -> None:
    result = serving_fleet.scribe(
        "transcribe",
        str(SPEAKERS / "two_voices.ogg"),
        "--speakers",
        "--known-speaker",
        f"Bob={SPEAKERS / 'known_B.ogg'}",
        "--address",
        serving_fleet.address,
    )
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("Speaker 1: ", "Bob: ")) for line in lines), result.stdout
    assert {line.split(":")[0] for line in lines} == {"Speaker 1", "Bob"}
