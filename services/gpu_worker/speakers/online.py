"""Speaker labels on a live stream's finals, online: each final's speech is embedded and compared with
the voices heard so far; a voice close enough to one of them takes its label, a new voice the next
number. Labels already sent never change, and the labeller's state (the voices and their labels) goes
into every resume point, so a stream moved to another worker keeps labelling its speakers the same way.

The labeller keeps its own copy of the last `KEEP_S` of audio: the session's buffer is cut right after
a final, and the speakers' work must not reach into it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import numpy as np

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.scheduler import Priority
from services.gpu_worker.engines.base import Word
from services.gpu_worker.speakers.fbank import normalised
from services.gpu_worker.speakers.scheduler import SpeakerScheduler
from services.gpu_worker.speakers.windows import speech_windows

KEEP_S = 60.0
#: A window at least this similar to a voice heard before is that voice (CAM++ windows of 1.5 s: one
#: voice 0.55 to 0.9 against its mean print, two voices under 0.5).
SAME_VOICE = 0.55
#: A window shorter than this is too little speech to tell voices apart: it takes the most similar voice
#: and does not change its print.
SHORT_S = 1.0
#: A pause between words at least this long ends a stretch of speech to embed (unless that stretch would
#: be too short to embed well: see `_join_short`).
PAUSE_S = 0.3


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-9)


def _join_short(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join each stretch shorter than SHORT_S to the neighbour across the shorter pause."""
    runs = list(runs)
    short = round(SHORT_S * SAMPLE_RATE)
    i = 0
    while len(runs) > 1 and i < len(runs):
        a, b = runs[i]
        if b - a >= short:
            i += 1
            continue
        before = a - runs[i - 1][1] if i > 0 else None
        after = runs[i + 1][0] - b if i + 1 < len(runs) else None
        if after is None or (before is not None and before <= after):
            runs[i - 1 : i + 1] = [(runs[i - 1][0], b)]
            i = max(0, i - 1)
        else:
            runs[i : i + 2] = [(a, runs[i + 1][1])]
    return runs


class OnlineLabeller:
    def __init__(
        self,
        scheduler: SpeakerScheduler,
        max_speakers: int = 0,
        names: Sequence[str] = (),
        references: np.ndarray | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._max = max_speakers
        self._audio = np.zeros(0, dtype=np.float32)
        self._end = 0  # stream sample just after the kept audio
        self._labels: list[str] = list(names)
        self._sums: list[np.ndarray] = [
            np.asarray(r, dtype=np.float64) for r in (references if references is not None else [])
        ]
        # A voice heard in one window only is weak (see `_assign`).
        self._strong: list[bool] = [True] * len(self._sums)
        self._unknown = 0  # numbers given to unknown voices so far

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._labels)

    def add_audio(self, samples: np.ndarray) -> None:
        keep = round(KEEP_S * SAMPLE_RATE)
        self._audio = np.concatenate([self._audio, samples.astype(np.float32, copy=False)])[-keep:]
        self._end += samples.size

    def _slice(self, start_s: float, end_s: float) -> tuple[int, np.ndarray]:
        begin = self._end - self._audio.size
        a = max(begin, round(start_s * SAMPLE_RATE))
        b = min(self._end, round(end_s * SAMPLE_RATE))
        return a, self._audio[a - begin : max(a, b) - begin]

    def label(self, words: Sequence[Word]) -> list[str]:
        """Blocking (embeds on the speaker scheduler): a label for each word of one final."""
        if not words:
            return []
        start, audio = self._slice(words[0].start, words[-1].end)
        # Windows never cross a pause between words: a new speaker usually starts after one, and a
        # window holding two voices matches neither.
        runs: list[tuple[int, int]] = []
        for word in words:
            a, b = round(word.start * SAMPLE_RATE) - start, round(word.end * SAMPLE_RATE) - start
            if runs and a - runs[-1][1] < round(PAUSE_S * SAMPLE_RATE):
                runs[-1] = (runs[-1][0], max(runs[-1][1], b))
            else:
                runs.append((max(0, a), b))
        windows = speech_windows(_join_short([(a, min(b, audio.size)) for a, b in runs if b > a]))
        if not windows:
            return [self._fallback()] * len(words)
        vectors = self._scheduler.embed([normalised(audio[a:b]) for a, b in windows], Priority.FINAL)
        owners = [self._assign(v, (b - a) / SAMPLE_RATE) for v, (a, b) in zip(vectors, windows, strict=True)]
        middles = [(start + (a + b) / 2) / SAMPLE_RATE for a, b in windows]
        out = []
        for word in words:
            at = (word.start + word.end) / 2
            out.append(self._labels[owners[int(np.argmin([abs(at - m) for m in middles]))]])
        return out

    def _fallback(self) -> str:
        """The label for speech too short to embed: the last voice heard, or a first (weak) one."""
        if not self._labels:
            self._new(np.zeros(self._scheduler.model.info.dimension), strong=False)
        return self._labels[-1]

    def _assign(self, vector: np.ndarray, seconds: float) -> int:
        """The voice of one window. A window unlike every voice starts a weak voice: one window may hold the
        end of one turn and the start of the next, so the voice only counts once a second window matches
        it; until then the next window unlike every voice replaces it. Short windows never start a voice."""
        similarity = [float(_unit(s) @ vector) if np.any(s) else -1.0 for s in self._sums]
        if not self._sums:
            return self._new(vector, strong=False)
        best = int(np.argmax(similarity))
        if seconds < SHORT_S:
            return best
        if similarity[best] >= SAME_VOICE:
            self._sums[best] = self._sums[best] + vector
            self._strong[best] = True
            return best
        weak = [i for i, ok in enumerate(self._strong) if not ok]
        if weak:
            self._sums[weak[0]] = np.asarray(vector, dtype=np.float64)
            return weak[0]
        if self._max and len(self._sums) >= self._max:
            return best
        return self._new(vector, strong=False)

    def _new(self, vector: np.ndarray, strong: bool) -> int:
        self._unknown += 1
        self._labels.append(str(self._unknown))
        self._sums.append(np.asarray(vector, dtype=np.float64))
        self._strong.append(strong)
        return len(self._sums) - 1

    def snapshot(self) -> bytes:
        sums = np.stack(self._sums).astype("<f8") if self._sums else np.zeros((0, 0))
        return json.dumps(
            {
                "v": 1,
                "labels": self._labels,
                "strong": self._strong,
                "unknown": self._unknown,
                "shape": list(sums.shape),
                "sums": base64.b64encode(sums.tobytes()).decode(),
            }
        ).encode()

    def restore(self, blob: bytes, audio_offset_s: float) -> None:
        """Continue from `snapshot`; the audio added next starts at `audio_offset_s` in the stream."""
        state = json.loads(blob)
        if state.get("v") != 1:
            raise ValueError("unknown speaker state version")
        rows, dim = (int(n) for n in state["shape"]) if state["shape"] else (0, 0)
        raw = np.frombuffer(base64.b64decode(state["sums"]), dtype="<f8")
        sums = raw.reshape(rows, dim) if rows else np.zeros((0, 0))
        labels = [str(label) for label in state["labels"]]
        if len(labels) != rows:
            raise ValueError("speaker state labels and voices differ in number")
        self._labels, self._sums = labels, [np.array(s) for s in sums]
        self._strong = [bool(x) for x in state["strong"]]
        if len(self._strong) != rows:
            raise ValueError("speaker state strengths and voices differ in number")
        self._unknown = int(state["unknown"])
        self._audio = np.zeros(0, dtype=np.float32)
        self._end = round(audio_offset_s * SAMPLE_RATE)
