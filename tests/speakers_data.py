"""The committed speaker-label conversations (tests/data/speakers) and how to score labels against them."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from services.common.audio import decode_container
from tests.helpers import DATA

SPEAKERS = DATA / "speakers"


@dataclass(frozen=True)
class RefTurn:
    speaker: str
    start: float
    end: float
    text: str


def conversation(name: str) -> tuple[bytes, list[RefTurn]]:
    """The Ogg file's bytes and its reference turns."""
    turns = json.loads((SPEAKERS / f"{name}.json").read_text())["turns"]
    return (SPEAKERS / f"{name}.ogg").read_bytes(), [RefTurn(**t) for t in turns]


def pcm16(data: bytes) -> bytes:
    """A container's audio as 16 kHz mono LINEAR16."""
    samples = decode_container(data, 600)
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def word_labels(
    words: list[tuple[float, float, str]], turns: list[RefTurn], margin: float = 0.5
) -> dict[str, Counter[str]]:
    """For each reference speaker, the labels of the words heard well inside its turns (`margin` s from
    either end): a word near a turn's edge may be timed into the neighbouring turn."""
    out: dict[str, Counter[str]] = {}
    for turn in turns:
        inside = [label for start, end, label in words if turn.start + margin <= (start + end) / 2 <= turn.end - margin]
        out.setdefault(turn.speaker, Counter()).update(inside)
    return out
