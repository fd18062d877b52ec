"""Speaker labels end to end: real workers embed the committed espeak-ng conversations with CAM++, the
gateway clusters and labels them; the counts, the labels at the turns, sharding, known speakers, bad
values, and a request without speaker labels."""

from __future__ import annotations

import grpc
import pytest

from services.gen import transcription_pb2 as pb
from services.gen import worker_pb2
from tests.conftest import Fleet
from tests.speakers_data import SPEAKERS, conversation, pcm16, word_labels


def words(response: pb.TranscribeResponse, shift: float = 0.0) -> list[tuple[float, float, str]]:
    return [
        (w.start_offset.ToNanoseconds() / 1e9 - shift, w.end_offset.ToNanoseconds() / 1e9 - shift, w.speaker_label)
        for s in response.segments
        for w in s.words
    ]


def options(**config: object) -> pb.RecognitionOptions:
    return pb.RecognitionOptions(
        enable_word_time_offsets=True,
        diarization_config=pb.SpeakerDiarizationConfig(**config),  # type: ignore[arg-type]
    )


def assert_turns_labelled(found: list[tuple[float, float, str]], turns: list, expected: dict[str, str]) -> None:
    for speaker, labels in word_labels(found, turns).items():
        assert set(labels) == {expected[speaker]}, (speaker, labels)


def test_two_voices_get_two_labels_that_change_at_the_turns(serving_fleet: Fleet) -> None:
    audio, turns = conversation("two_voices")
    response = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=audio, options=options()), timeout=120
    )
    assert [s.speaker_label for s in response.speakers] == ["1", "2"]
    times = {s.speaker_label: s.speaking_time.ToNanoseconds() / 1e9 for s in response.speakers}
    spoken = {k: sum(t.end - t.start for t in turns if t.speaker == k) for k in "AB"}
    assert abs(times["1"] - spoken["A"]) < 3 and abs(times["2"] - spoken["B"]) < 3, (times, spoken)
    assert_turns_labelled(words(response), turns, {"A": "1", "B": "2"})
    # One speaker per segment: a segment's words all carry its label.
    for segment in response.segments:
        assert segment.speaker_label in {"1", "2"}
        assert {w.speaker_label for w in segment.words} == {segment.speaker_label}
    assert not response.HasField("speaker_embeddings")  # internal: the gateway removes it


def test_three_voices_with_progress_label_the_last_report(serving_fleet: Fleet) -> None:
    audio, turns = conversation("three_voices")
    request = pb.TranscribeWithProgressRequest(
        request=pb.TranscribeRequest(
            audio_content=audio, options=pb.RecognitionOptions(diarization_config=pb.SpeakerDiarizationConfig())
        )
    )
    reports = list(serving_fleet.transcription.TranscribeWithProgress(request, timeout=120))
    result = reports[-1].result
    assert [s.speaker_label for s in result.speakers] == ["1", "2", "3"]
    # Words were not asked for: none come back, labels are on the segments.
    assert all(not s.words for r in reports for s in r.segments) and all(not s.words for s in result.segments)
    expected = {"A": "1", "B": "2", "C": "3"}
    for turn in turns:
        inside = [
            s.speaker_label
            for s in result.segments
            if turn.start + 0.3 <= s.start_offset.ToNanoseconds() / 1e9
            and s.end_offset.ToNanoseconds() / 1e9 <= turn.end + 0.3
        ]
        assert set(inside) <= {expected[turn.speaker]}, (turn, inside)
    # The interim reports' segments carry no label yet; the last report's result has them all.
    assert all(not s.speaker_label for r in reports[:-1] for s in r.segments)


def test_a_sharded_recording_keeps_its_labels_across_workers(serving_fleet: Fleet) -> None:
    audio, turns = conversation("two_voices")
    pcm = pcm16(audio)
    request = pb.TranscribeRequest(
        audio_content=pcm * 2,  # 68 s: sharded over both workers (SHARD_MIN_SECONDS=20, 30 s pieces)
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=16000,
        audio_channel_count=1,
        options=options(),
    )
    response = serving_fleet.transcription.Transcribe(request, timeout=180)
    assert len(set(response.worker_id.split(","))) == 2, response.worker_id
    assert [s.speaker_label for s in response.speakers] == ["1", "2"]
    half = len(pcm) / 2 / 16000
    found = words(response)
    assert_turns_labelled([w for w in found if w[0] < half], turns, {"A": "1", "B": "2"})
    assert_turns_labelled([(a - half, b - half, s) for a, b, s in found if a >= half], turns, {"A": "1", "B": "2"})


def test_known_speakers_are_named(serving_fleet: Fleet) -> None:
    audio, turns = conversation("two_voices")
    alice = pb.KnownSpeaker(name="Alice", audio_content=(SPEAKERS / "known_A.ogg").read_bytes())
    bob = pb.KnownSpeaker(name="Bob", audio_content=(SPEAKERS / "known_B.ogg").read_bytes())
    one = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=audio, options=options(known_speakers=[bob])), timeout=120
    )
    assert [s.speaker_label for s in one.speakers] == ["1", "Bob"]
    assert_turns_labelled(words(one), turns, {"A": "1", "B": "Bob"})
    both = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=audio, options=options(known_speakers=[alice, bob])), timeout=120
    )
    assert [s.speaker_label for s in both.speakers] == ["Alice", "Bob"]


BAD = [
    ({"min_speaker_count": 3, "max_speaker_count": 2}, "diarization_config.min_speaker_count 3 is over"),
    ({"max_speaker_count": 11}, "diarization_config.max_speaker_count is 11"),
    ({"min_speaker_count": -1}, "diarization_config.min_speaker_count is -1"),
    ({"known_speakers": [pb.KnownSpeaker(name=f"P{i}", audio_content=b"x") for i in range(5)]}, "known_speakers has 5"),
    ({"known_speakers": [pb.KnownSpeaker(name="7", audio_content=b"x")]}, "known_speakers[0].name '7' is a number"),
    ({"known_speakers": [pb.KnownSpeaker(name="Ann", audio_content=b"not audio")]}, "known_speakers[0].audio_content"),
]


@pytest.mark.parametrize(("config", "message"), BAD)
def test_bad_diarization_values_are_refused_naming_the_field(
    serving_fleet: Fleet, config: dict[str, object], message: str
) -> None:
    audio, _ = conversation("two_voices")
    with pytest.raises(grpc.RpcError) as caught:
        serving_fleet.transcription.Transcribe(
            pb.TranscribeRequest(audio_content=audio, options=options(**config)), timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details(), caught.value.details()
    assert "BAD_DIARIZATION_CONFIG" in str(caught.value.trailing_metadata())


def test_bad_stream_diarization_values_are_refused(serving_fleet: Fleet) -> None:
    config = pb.StreamingConfig(
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=16000,
        diarization_config=pb.SpeakerDiarizationConfig(min_speaker_count=4, max_speaker_count=2),
    )
    requests = iter([pb.StreamingTranscribeRequest(streaming_config=config)])
    with pytest.raises(grpc.RpcError) as caught:
        list(serving_fleet.transcription.StreamingTranscribe(requests, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "diarization_config.min_speaker_count 4 is over" in caught.value.details()


def embedded_windows(fleet: Fleet) -> int:
    return sum(w.health.speakers.windows_embedded for w in fleet.workers().values())


def test_a_request_without_diarization_is_unchanged_and_costs_no_embedding(serving_fleet: Fleet) -> None:
    audio, _ = conversation("two_voices")
    before = embedded_windows(serving_fleet)
    response = serving_fleet.transcription.Transcribe(
        pb.TranscribeRequest(audio_content=audio, options=pb.RecognitionOptions(enable_word_time_offsets=True)),
        timeout=120,
    )
    assert not response.speakers
    assert all(not s.speaker_label and all(not w.speaker_label for w in s.words) for s in response.segments)
    serving_fleet.wait_all_serving()
    assert embedded_windows(serving_fleet) == before
    health = next(iter(serving_fleet.workers().values())).health
    assert health.speaker_model.startswith("CAM++") and health.speaker_model_bytes > 0
    assert isinstance(health.speakers, worker_pb2.SpeakerStats)


def test_speaker_work_shows_in_prometheus_and_on_the_status_page(serving_fleet: Fleet) -> None:
    import json
    import re
    import urllib.request

    from tests.helpers import wait_for

    audio, _ = conversation("two_voices")
    serving_fleet.transcription.Transcribe(pb.TranscribeRequest(audio_content=audio, options=options()), timeout=120)

    def exported() -> float:
        with urllib.request.urlopen(f"http://{serving_fleet.metrics}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        found = re.findall(r'^scribe_worker_speaker_audio_seconds_total\{worker="[^"]+"\} (\S+)$', text, re.M)
        return sum(float(v) for v in found)

    assert wait_for(lambda: exported() > 25, 10, 0.25)  # at least this call's 34 s of speech, less its pauses

    def page_rows() -> list[dict[str, object]]:
        with urllib.request.urlopen(f"http://{serving_fleet.http}/api/status", timeout=5) as answer:
            return list(json.load(answer)["workers"])

    assert wait_for(lambda: sum(float(str(r.get("speaker_seconds", 0))) for r in page_rows()) > 25, 30, 0.5)
