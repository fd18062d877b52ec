"""A long recording as pieces of a few minutes, cut at silences while it is decoded.

Decoding is incremental (PyAV reads the file or bytes frame by frame), so at most one piece and the
search margin after it are held here, whatever the recording's length: an hour of 16 kHz float32 would
be 230 MB. Pure and blocking; the pipeline runs `iter_pieces` in a thread, one piece at a time.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np

from services.common import audio
from services.common.audio import FRAME, SAMPLE_RATE, frame_energy
from services.gateway.recordings import shard
from services.gen import transcription_pb2 as pb

#: How far from a piece's ideal end the cut may move to find the quietest 20 ms.
SEARCH_S = 8.0


@dataclass(frozen=True)
class AudioPiece:
    """16 kHz mono LINEAR16 audio of one piece, and where it starts in the recording."""

    index: int
    offset_s: float
    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * SAMPLE_RATE)


@dataclass(frozen=True)
class Source:
    """A recording to decode: its bytes or a spooled file, and how it is encoded."""

    data: bytes | str | os.PathLike[str]
    encoding: int = pb.AUDIO_ENCODING_UNSPECIFIED
    sample_rate_hertz: int = 0
    channels: int = 0

    def chunks(self, max_seconds: float, max_ratio: float) -> Iterator[np.ndarray]:
        """16 kHz mono int16 chunks, or AudioError."""
        if self.encoding == pb.AUDIO_ENCODING_LINEAR16:
            return audio.iter_linear16(self.data, self.sample_rate_hertz, self.channels, max_seconds)
        return audio.iter_container(self.data, max_seconds, max_ratio)

    def declared_seconds(self) -> float:
        """Length the header (or, for LINEAR16, the size) promises; 0 when unknown."""
        if self.encoding == pb.AUDIO_ENCODING_LINEAR16:
            channels = audio.check_pcm_format(self.sample_rate_hertz, self.channels)
            size = len(self.data) if isinstance(self.data, bytes) else os.path.getsize(self.data)
            return size / (2 * channels * self.sample_rate_hertz)
        return shard.container_duration(self.data) or 0.0


class Cutter:
    """Takes int16 chunks, gives back pieces of about `piece_s`, each ending in the quietest 20 ms frame
    within SEARCH_S of its ideal end, so no word is cut in half."""

    def __init__(self, piece_s: float) -> None:
        self._target = int(piece_s * SAMPLE_RATE) // FRAME
        self._reach = int(SEARCH_S * SAMPLE_RATE) // FRAME
        self._held: list[np.ndarray] = []
        self._held_samples = 0
        self._offset = 0  # samples already given out
        self._index = 0

    def feed(self, chunk: np.ndarray) -> Iterator[AudioPiece]:
        self._held.append(chunk)
        self._held_samples += chunk.size
        while self._held_samples >= (self._target + self._reach) * FRAME:
            held = np.concatenate(self._held)
            cut = shard.quietest_point(frame_energy(held), self._target - self._reach, self._target + self._reach)
            cut = cut or self._target * FRAME
            self._held, self._held_samples = [held[cut:]], held.size - cut
            yield self._piece(held[:cut])

    def finish(self) -> Iterator[AudioPiece]:
        """The rest, as a last piece (shorter than the others, or a little longer)."""
        if self._held_samples:
            rest = np.concatenate(self._held)
            self._held, self._held_samples = [], 0
            yield self._piece(rest)

    def _piece(self, samples: np.ndarray) -> AudioPiece:
        # Decoders give native int16, little-endian on every platform scribe runs on: no copy but tobytes().
        piece = AudioPiece(self._index, self._offset / SAMPLE_RATE, np.ascontiguousarray(samples, "<i2").tobytes())
        self._index += 1
        self._offset += samples.size
        return piece


def iter_pieces(
    source: Source, piece_s: float, max_seconds: float, max_ratio: float
) -> Generator[AudioPiece, None, None]:
    """Blocking: the recording's pieces in order, decoded as they are asked for; AudioError if it is bad."""
    cutter = Cutter(piece_s)
    empty = True
    for chunk in source.chunks(max_seconds, max_ratio):
        if chunk.size:
            empty = False
            yield from cutter.feed(chunk)
    if empty:
        raise audio.AudioError("EMPTY_AUDIO", "the file decodes to zero samples of audio")
    yield from cutter.finish()
