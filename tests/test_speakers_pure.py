"""Speaker labels' pure parts: clustering, turns and labels on a transcript, option checks, output shapes."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest

from services.gateway.speakers import clustering, labelling
from services.gen import transcription_pb2 as pb
from services.gpu_worker.speakers.options import speaker_options
from services.gpu_worker.speakers.windows import speech_windows
from services.http_api.diarized import diarized_json_body, known_speakers, openai_label
from services.http_api.errors import HttpError

pytestmark = pytest.mark.fast


def voices(counts: list[int], spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around len(counts) random voice centres, in runs (turns) of 3 windows, voices taking turns."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 192))
    left, rows, truth = list(counts), [], []
    while any(left):
        for v in range(len(counts)):
            for _ in range(min(3, left[v])):
                rows.append(centres[v] / np.linalg.norm(centres[v]) + spread * rng.normal(size=192) / np.sqrt(192))
                truth.append(v)
            left[v] -= min(3, left[v])
    x = np.array(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(truth)


@pytest.mark.parametrize("counts", [[30], [30, 24], [20, 20, 14], [40, 12, 30, 18]])
def test_clustering_finds_the_voices_and_numbers_them_by_first_appearance(counts: list[int]) -> None:
    x, truth = voices(counts)
    labels = clustering.cluster(x)
    assert labels.max() + 1 == len(counts)
    assert np.array_equal(labels, truth)  # voice v first speaks v-th, so its number is v


def test_clustering_keeps_within_the_requested_bounds() -> None:
    x, _ = voices([20, 20, 20])
    assert clustering.cluster(x, max_speakers=2).max() + 1 == 2
    one, _ = voices([40])
    assert clustering.cluster(one, min_speakers=2).max() + 1 == 2
    assert list(clustering.cluster(one[:3])) == [0, 0, 0]  # too few windows to tell voices apart


def test_turns_split_overlapping_windows_in_the_middle_and_words_take_their_turn() -> None:
    turns = labelling.timeline([0.0, 1.5, 2.5, 4.0], [1.5, 3.0, 4.0, 5.5], [0, 0, 1, 1])
    assert turns == [labelling.Turn(0.0, 2.75, 0), labelling.Turn(2.75, 5.5, 1)]
    assert labelling.speaker_at(turns, 2.6, 3.2) == 1
    assert labelling.speaker_at(turns, 7.0, 7.5) == 1  # after every turn: the nearest


def _word(start: float, end: float, text: str) -> pb.WordInfo:
    w = pb.WordInfo(word=text)
    w.start_offset.FromNanoseconds(int(start * 1e9))
    w.end_offset.FromNanoseconds(int(end * 1e9))
    return w


def test_a_segment_spoken_by_two_is_split_at_the_word_where_the_speaker_changes() -> None:
    segment = pb.Segment(
        text=" yes I agree. Well, no",
        words=[
            _word(0, 0.4, "yes"),
            _word(0.5, 0.7, "I"),
            _word(0.8, 1.2, "agree."),
            _word(2.0, 2.3, "Well,"),
            _word(2.4, 2.8, "no"),
        ],
    )
    segment.start_offset.FromNanoseconds(0)
    segment.end_offset.FromNanoseconds(3 * 10**9)
    turns = [labelling.Turn(0.0, 1.6, 0), labelling.Turn(1.6, 3.0, 1)]
    parts = labelling.label_segments([segment], turns, ["1", "2"])
    assert [(p.id, p.speaker_label, p.text) for p in parts] == [(0, "1", "yes I agree."), (1, "2", "Well, no")]
    assert parts[0].end_offset.ToNanoseconds() == 1_200_000_000 and parts[1].start_offset.ToNanoseconds() == 2 * 10**9
    assert [w.speaker_label for p in parts for w in p.words] == ["1", "1", "1", "2", "2"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            pb.SpeakerDiarizationConfig(min_speaker_count=5, max_speaker_count=4),
            "x.min_speaker_count 5 is over x.max_speaker_count 4",
        ),
        (pb.SpeakerDiarizationConfig(max_speaker_count=12), "x.max_speaker_count is 12"),
        (
            pb.SpeakerDiarizationConfig(known_speakers=[pb.KnownSpeaker(name="A", audio_content=b"1")] * 2),
            "x.known_speakers[1].name 'A' is given twice",
        ),
        (
            pb.SpeakerDiarizationConfig(known_speakers=[pb.KnownSpeaker(name="A")]),
            "x.known_speakers[0].audio_content is empty",
        ),
        (
            pb.SpeakerDiarizationConfig(
                max_speaker_count=1, known_speakers=[pb.KnownSpeaker(name=n, audio_content=b"1") for n in "AB"]
            ),
            "more than max_speaker_count 1",
        ),
    ],
)
def test_bad_options_name_the_field(config: pb.SpeakerDiarizationConfig, message: str) -> None:
    with pytest.raises(Exception) as caught:
        speaker_options(config, "x")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in caught.value.message  # type: ignore[attr-defined]


def test_windows_cover_each_stretch_and_skip_slivers() -> None:
    sr = 16000
    assert speech_windows([(0, 4 * sr), (5 * sr, 5 * sr + 3000)]) == [(0, 24000), (24000, 48000), (40000, 64000)]
    assert speech_windows([(0, sr)]) == [(0, sr)]


def test_diarized_json_has_openai_s_shape_and_letters() -> None:
    response = pb.TranscribeResponse(
        transcript="hi there",
        segments=[
            pb.Segment(id=0, text=" hi", speaker_label="1"),
            pb.Segment(id=1, text=" there", speaker_label="Bob"),
        ],
    )
    response.audio_duration.FromSeconds(3)
    body = diarized_json_body(response)
    assert body["task"] == "transcribe" and body["duration"] == 3.0
    assert [(s["id"], s["speaker"], s["text"], s["type"]) for s in body["segments"]] == [  # type: ignore[attr-defined]
        ("seg_000", "A", "hi", "transcript.text.segment"),
        ("seg_001", "Bob", "there", "transcript.text.segment"),
    ]
    assert openai_label("2") == "B" and openai_label("Alice") == "Alice"


def test_known_speakers_come_as_data_urls_paired_with_names() -> None:
    url = "data:audio/wav;base64," + base64.b64encode(b"RIFF").decode()
    assert known_speakers(["Ann"], [url]) == {"Ann": b"RIFF"}
    for names, refs in ((["Ann"], []), (["Ann"], ["http://x/a.wav"]), (["Ann"], ["data:audio/wav;base64,%%%"])):
        with pytest.raises(HttpError) as caught:
            known_speakers(names, refs)
        assert caught.value.status == 400 and caught.value.param == "known_speaker_references[]"
