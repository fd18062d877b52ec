"""Conversations for the speaker-label benchmark, with their references.

Built from ../shared/audio: each voice is one reader's recorded clips, and a conversation hands the turns
from voice to voice (seeded random order), with pauses of 0.15 to 0.8 s and, now and then, a next turn that
starts up to 0.6 s before the last one ends (the overlap is scored). The turn-taking is synthetic: real
people interrupt, back-channel and talk over each other far more, and each voice here comes from its own
recording, so the channel alone tells some of them apart. Long clips are cut at their quietest point into
turns of 4 to 10 s; a voice's clips are used in order (and again from the start when they run out), so
its reference text is its clips' texts in order, as cpWER needs.

The real conversation is pyannote.audio's sample: 30 s of a two-person telephone call (one channel, the
same conditions for both voices), with its RTTM and per-speaker transcript, read from the pyannote.audio
wheel that `pip download` fetches from PyPI (its code is not installed or run).
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.common.audio import FRAME, SAMPLE_RATE, decode_container, frame_energy

#: Readers in ../shared/audio: name -> file prefixes (one reader each; checked with CAM++: 0.94 to 0.95
#: within a reader, under 0.45 across).
READERS = {
    "lj": ("ljspeech/",),
    "sonnets": ("librivox_sonnets/",),
    "austen": ("librivox_austen/",),
    "librispeech": ("librispeech/2412-",),
    "spontaneous": ("spontaneous/acoustic",),
    "jfk": ("jfk.flac",),
}
PYANNOTE_WHEEL = "pyannote.audio==4.0.7"


@dataclass
class Clip:
    audio: np.ndarray
    text: str


@dataclass
class Conversation:
    name: str
    audio: np.ndarray
    turns: list[tuple[float, float, str]]  # (start, end, speaker), overlapping where two speak
    texts: dict[str, str]  # speaker -> what it says, in order
    same_conditions: bool = False
    note: str = ""

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return sorted(self.texts)


def load_readers(audio_dir: Path) -> dict[str, list[Clip]]:
    rows = list(csv.DictReader((audio_dir / "manifest.tsv").open(), delimiter="\t"))
    out: dict[str, list[Clip]] = {}
    for reader, prefixes in READERS.items():
        clips = []
        for row in rows:
            if row["file"].startswith(prefixes):
                samples = decode_container((audio_dir / row["file"]).read_bytes(), 600)
                rms = float(np.sqrt(np.mean(samples**2))) or 1.0
                clips.append(Clip((samples * (0.05 / rms)).clip(-1, 1).astype(np.float32), row["reference_text"]))
        out[reader] = clips
    return out


def _pieces(audio: np.ndarray, longest_s: float = 10.0, shortest_s: float = 4.0) -> list[np.ndarray]:
    """A long clip cut at its quietest 20 ms frames into pieces of 4 to 10 s."""
    out = []
    while audio.size > longest_s * SAMPLE_RATE:
        lo, hi = int(shortest_s * SAMPLE_RATE) // FRAME, int(longest_s * SAMPLE_RATE) // FRAME
        energy = frame_energy(audio[: hi * FRAME])
        cut = (lo + int(np.argmin(energy[lo:hi]))) * FRAME + FRAME // 2
        out.append(audio[:cut])
        audio = audio[cut:]
    out.append(audio)
    return out


@dataclass
class _Voice:
    clips: list[Clip]
    at: int = 0
    queue: list[np.ndarray] = field(default_factory=list)
    said: list[str] = field(default_factory=list)

    def next_turn(self) -> np.ndarray:
        if not self.queue:
            clip = self.clips[self.at % len(self.clips)]
            self.at += 1
            self.queue = _pieces(clip.audio)
            self.said.append(clip.text)
        return self.queue.pop(0)


def build(name: str, readers: dict[str, list[Clip]], voices: list[str], minutes: float, seed: int = 0) -> Conversation:
    rng = random.Random(seed)
    state = {v: _Voice(readers[v]) for v in voices}
    parts: list[tuple[int, np.ndarray, str]] = []
    position = int(0.5 * SAMPLE_RATE)
    last = None
    while position < minutes * 60 * SAMPLE_RATE or any(s.queue for s in state.values()):
        unfinished = [v for v in voices if state[v].queue]
        speaker = (
            unfinished[0] if position >= minutes * 60 * SAMPLE_RATE else rng.choice([v for v in voices if v != last])
        )
        turn = state[speaker].next_turn()
        if parts and rng.random() < 0.15:
            start = position - int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)  # talks over the end of the last turn
        else:
            start = position + int(rng.uniform(0.15, 0.8) * SAMPLE_RATE)
        parts.append((start, turn, speaker))
        position = start + turn.size
        last = speaker
    audio = np.zeros(position + SAMPLE_RATE // 2, dtype=np.float32)
    turns = []
    for start, turn, speaker in parts:
        audio[start : start + turn.size] += turn
        turns.append((start / SAMPLE_RATE, (start + turn.size) / SAMPLE_RATE, speaker))
    texts = {v: " ".join(state[v].said) for v in voices}
    return Conversation(name, audio.clip(-1, 1), turns, texts)


def pyannote_sample(cache: Path) -> Conversation:
    """pyannote.audio's sample call (real, two people on one telephone line), from its wheel on PyPI."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("pyannote_audio-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PYANNOTE_WHEEL, "-d", str(cache)], check=True
        )
        wheels = sorted(cache.glob("pyannote_audio-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        audio = decode_container(wheel.read("pyannote/audio/sample/sample.wav"), 600)
        rttm = wheel.read("pyannote/audio/sample/sample.rttm").decode()
        stm = wheel.read("pyannote/audio/sample/sample.stm").decode()
    turns = []
    for line in rttm.splitlines():
        fields = line.split()
        start, length, speaker = float(fields[3]), float(fields[4]), fields[7]
        turns.append((start, start + length, speaker))
    names = {"Diane": "speaker90", "Sheila": "speaker91"}  # the STM names the RTTM's speakers
    texts: dict[str, list[str]] = {}
    for line in stm.splitlines():
        fields = line.split()
        texts.setdefault(names[fields[2]], []).append(" ".join(fields[5:]))
    return Conversation(
        "pyannote sample call (real, 2 voices, one telephone line)",
        audio,
        turns,
        {k: " ".join(v) for k, v in texts.items()},
        same_conditions=True,
    )
