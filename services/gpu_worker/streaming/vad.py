"""Voice activity of a live stream: Silero VAD (the ONNX model faster-whisper ships) run window by window.

faster-whisper's own `get_speech_timestamps` wants the whole recording. A stream needs the same
model fed as audio arrives, so this keeps the model's recurrent state (h, c) and the 64-sample
context between calls; fed in pieces, it gives the same probabilities as one call over the whole
audio. The model is shared by every stream of the process (ONNX Runtime sessions are thread-safe),
and each 32 ms window costs about 0.1 ms of one core, so it runs on the event loop.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.vad import get_vad_model

WINDOW = 512  # samples at 16 kHz: the window Silero v5/v6 is trained on
_CONTEXT = 64


class SileroStream:
    """Speech probability of each 512-sample window of a 16 kHz stream, fed in pieces of any size."""

    def __init__(self) -> None:
        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def state(self) -> dict[str, str]:
        """The recurrent state and context, to continue this stream elsewhere (failover)."""
        return {
            name: base64.b64encode(np.ascontiguousarray(value, dtype=np.float32).tobytes()).decode()
            for name, value in (("h", self._h), ("c", self._c), ("context", self._context), ("pending", self._pending))
        }

    def load_state(self, state: dict[str, str]) -> None:
        def array(name: str) -> np.ndarray:
            return np.frombuffer(base64.b64decode(state[name]), dtype=np.float32).copy()

        self._h = array("h").reshape(1, 1, 128)
        self._c = array("c").reshape(1, 1, 128)
        self._context = array("context")
        self._pending = array("pending")

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the windows completed by `samples`; a partial window waits for the next call."""
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = audio.size - audio.size % WINDOW
        self._pending = audio[whole:]
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio[:whole].reshape(-1, WINDOW)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT:]])
        self._context = windows[-1, -_CONTEXT:].copy()
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": self._h, "c": self._c}
        )
        return np.asarray(out, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class VadConfig:
    """When speech begins and ends. Times in seconds."""

    threshold: float = 0.5  # a window at or above this is speech
    speech_end_s: float = 0.5  # this much silence after speech ends the utterance
    pre_roll_s: float = 0.3  # audio kept before the first speech window, so the first sound is not clipped

    @property
    def neg_threshold(self) -> float:
        # Hysteresis as in faster-whisper: below this is silence; in between keeps the current state.
        return max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class VoiceEvent:
    """Speech began (`begin`) or an utterance ended (`end`), at `sample` from the stream's start."""

    kind: str  # "begin" or "end"
    sample: int


class SpeechDetector:
    """Turns window probabilities into utterances: begin on the first speech window, end after silence."""

    def __init__(self, config: VadConfig, rate: int = 16_000) -> None:
        self.config = config
        self._end_after = round(config.speech_end_s * rate)
        self.in_speech = False
        self.speech_start = 0  # sample of the current utterance's first speech window
        self.silence_start: int | None = None  # sample where the current pause began, while in speech

    def window(self, probability: float, start: int) -> VoiceEvent | None:
        """Feed the probability of the window that starts at sample `start`."""
        if not self.in_speech:
            if probability >= self.config.threshold:
                self.in_speech, self.speech_start, self.silence_start = True, start, None
                return VoiceEvent("begin", start)
            return None
        if probability >= self.config.threshold:
            self.silence_start = None
        elif probability < self.config.neg_threshold and self.silence_start is None:
            self.silence_start = start
        if self.silence_start is not None and start + WINDOW - self.silence_start >= self._end_after:
            self.in_speech = False
            return VoiceEvent("end", self.silence_start)
        return None


class VoiceTrack:
    """Voice activity over one stream: windows scored by Silero as audio comes, judged one at a time.

    Scoring runs ahead of judging: the session judges windows only up to where it must decode next, so
    what it decodes depends on the audio alone, not on how much arrived at once."""

    def __init__(self, config: VadConfig, rate: int = 16_000) -> None:
        self.config = config
        self.silero = SileroStream()
        self.detector = SpeechDetector(config, rate)
        self.scored: deque[tuple[int, float]] = deque()  # (window start, probability) not judged yet
        self.judged: deque[tuple[int, float]] = deque()  # judged windows whose audio is still kept
        self.fed = 0  # samples handed to Silero
        self.pos = 0  # samples judged: audio up to here is speech or not

    def score(self, audio: np.ndarray) -> None:
        """Score the whole windows of `audio`, the stream's samples from `fed` on."""
        whole = audio.size // WINDOW * WINDOW
        if whole:
            scores = self.silero.feed(audio[:whole])
            self.scored.extend((self.fed + i * WINDOW, float(p)) for i, p in enumerate(scores))
            self.fed += whole

    def judge_next(self) -> VoiceEvent | None:
        """Judge the next scored window (there must be one)."""
        start, probability = self.scored.popleft()
        self.judged.append((start, probability))
        self.pos = start + WINDOW
        return self.detector.window(probability, start)

    def forget_before(self, sample: int) -> None:
        while self.judged and self.judged[0][0] + WINDOW <= sample:
            self.judged.popleft()

    def state(self) -> dict[str, Any]:
        d = self.detector
        return {
            "silero": self.silero.state(),
            "in_speech": d.in_speech,
            "speech_start": d.speech_start,
            "silence_start": d.silence_start,
            "scored": list(self.scored),
            "judged": list(self.judged),
            "fed": self.fed,
            "pos": self.pos,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.silero.load_state(state["silero"])
        d = self.detector
        d.in_speech, d.speech_start, d.silence_start = state["in_speech"], state["speech_start"], state["silence_start"]
        self.scored = deque((int(a), float(p)) for a, p in state["scored"])
        self.judged = deque((int(a), float(p)) for a, p in state["judged"])
        self.fed, self.pos = int(state["fed"]), int(state["pos"])
