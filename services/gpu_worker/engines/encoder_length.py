"""How many seconds of input the encoder reads for a window (pure).

Whisper was trained on 30 s windows, and faster-whisper pads every window to 30 s. The encoder's cost
falls faster than its input's length (attention is quadratic in it): on a 2-core CPU, tiny.en int8
takes 197 ms for 30 s of input and 26 ms for 10 s. So a window of L seconds is encoded as L plus a
margin of silence, rounded up to one of a few bucket lengths: windows of similar length then share a
batch (a batch is padded to its longest window's bucket, never to 30 s). The margin matters: Whisper
learnt where speech ends from 30 s windows, and on a short input that ends soon after the speech it
does not see the end: it repeats itself or stops early (measured: docs/encoder.md).

`ENCODER_MIN_SECONDS` is the shortest input any window gets: buckets below it are not used, and 30
encodes every window at 30 s as faster-whisper does. A window within `MARGIN_S` of 30 s gets 30 s:
that is the input Whisper was trained on, and it reads speech up to its end correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gpu_worker.engines.base import WINDOW_SECONDS

#: The encoder input lengths a window may get, in seconds.
BUCKETS_S = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
#: Silence after a window's audio, at least, inside its encoder input. With less, tiny.en loops: given 3 s of
#: input for 1.9 s of speech it writes the sentence over and over instead of ending; with 1 s WER went from 3.8%
#: to 101% on the recorded set, 3 s gave 5.4%, 5 s 3.7% (docs/encoder.md).
MARGIN_S = 5.0


@dataclass(frozen=True)
class EncoderLengths:
    """The rule: `min_s` is ENCODER_MIN_SECONDS; lengths are `min_s` and the buckets above it."""

    min_s: float = WINDOW_SECONDS
    margin_s: float = MARGIN_S

    @property
    def buckets(self) -> tuple[float, ...]:
        smallest = min(max(self.min_s, 1.0), WINDOW_SECONDS)
        return (smallest, *(b for b in BUCKETS_S if b > smallest))

    def seconds(self, audio_s: float) -> float:
        """Encoder input for a window of `audio_s` seconds: the smallest bucket that holds it and the margin."""
        need = min(audio_s + self.margin_s, WINDOW_SECONDS)
        return next((b for b in self.buckets if b >= need), WINDOW_SECONDS)

    def at_least(self, audio_s: float, wanted_s: float | None) -> float:
        """A caller's explicit length (`WindowJob.encode_s`), kept within [the audio, 30 s]; else the rule's."""
        if wanted_s is None:
            return self.seconds(audio_s)
        return min(max(wanted_s, audio_s), WINDOW_SECONDS)
