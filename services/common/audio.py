"""Audio in, 16 kHz mono float32 out: what every Whisper engine wants.

Containers are decoded with PyAV (the FFmpeg binding faster-whisper itself uses); raw LINEAR16 is
resampled with PyAV's swresample. Decoding stops as soon as the audio passes its allowed length, so a
small file that expands to hours of audio costs a bounded amount of memory and time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

SAMPLE_RATE = 16_000
SUPPORTED_SAMPLE_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 2
_LAYOUTS = {1: "mono", 2: "stereo"}


@dataclass(frozen=True)
class AudioError(Exception):
    """The audio cannot be used. `reason` is a stable machine-readable code, `message` says what to do."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def _to_float(frames: list[np.ndarray]) -> np.ndarray:
    if not frames:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(frames).astype(np.float32) / 32768.0


def decode_container(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode any container FFmpeg reads into 16 kHz mono float32, refusing audio over `max_seconds`."""
    if not data:
        raise AudioError("EMPTY_AUDIO", "audio_content is empty: send the bytes of an audio file")
    limit = int(max_seconds * SAMPLE_RATE)
    frames: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("NO_AUDIO_STREAM", "the file has no audio track: send a file with an audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += chunk.size
                    if total > limit:
                        raise AudioError(
                            "AUDIO_TOO_LONG",
                            f"audio is longer than the {max_seconds:g} s a Transcribe call may carry: "
                            "split it or use StreamingTranscribe",
                        )
                    frames.append(chunk)
            for out in resampler.resample(None):
                frames.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise AudioError(
            "UNDECODABLE_AUDIO",
            f"could not decode the audio ({exc.__class__.__name__}): send a wav, flac, mp3, ogg or m4a "
            "file, or raw PCM with encoding LINEAR16 and sample_rate_hertz",
        ) from None
    audio = _to_float(frames)
    if audio.size == 0:
        raise AudioError("EMPTY_AUDIO", "the file decodes to zero samples of audio")
    return audio


def check_pcm_format(sample_rate_hertz: int, channels: int) -> int:
    """Validate a LINEAR16 format; returns the channel count (0 means mono)."""
    if sample_rate_hertz not in SUPPORTED_SAMPLE_RATES:
        rates = ", ".join(str(r) for r in SUPPORTED_SAMPLE_RATES)
        raise AudioError(
            "UNSUPPORTED_SAMPLE_RATE",
            f"sample_rate_hertz {sample_rate_hertz} is not supported for LINEAR16: use one of {rates}",
        )
    channels = channels or 1
    if channels not in _LAYOUTS:
        raise AudioError(
            "UNSUPPORTED_CHANNEL_COUNT",
            f"audio_channel_count {channels} is not supported: send mono (1) or interleaved stereo (2)",
        )
    return channels


class PcmResampler:
    """Turns LINEAR16 chunks of any supported rate and channel count into 16 kHz mono float32.

    Keeps the resampler's state between chunks, so a stream resampled chunk by chunk equals the
    whole recording resampled at once (no clicks at chunk edges).
    """

    def __init__(self, sample_rate_hertz: int, channels: int) -> None:
        self.channels = check_pcm_format(sample_rate_hertz, channels)
        self.rate = sample_rate_hertz
        self._layout = _LAYOUTS[self.channels]
        self._pending = b""
        self._frame_bytes = 2 * self.channels
        self._resampler: av.AudioResampler | None = None
        if sample_rate_hertz != SAMPLE_RATE or self.channels != 1:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def feed(self, data: bytes) -> np.ndarray:
        """Convert one chunk; an odd trailing byte or half frame waits for the next chunk."""
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        pcm = np.frombuffer(data[:usable], dtype="<i2")
        if self._resampler is None:
            return pcm.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self._layout)
        frame.sample_rate = self.rate
        return _to_float([out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)])

    def flush(self) -> np.ndarray:
        """Samples the resampler still holds at the end of the audio."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _to_float([out.to_ndarray().reshape(-1) for out in self._resampler.resample(None)])


def decode_linear16(data: bytes, sample_rate_hertz: int, channels: int, max_seconds: float) -> np.ndarray:
    """Whole-buffer LINEAR16 to 16 kHz mono float32."""
    if not data:
        raise AudioError("EMPTY_AUDIO", "audio_content is empty: send LINEAR16 samples")
    resampler = PcmResampler(sample_rate_hertz, channels)
    seconds = len(data) / (2 * resampler.channels * sample_rate_hertz)
    if seconds > max_seconds:
        raise AudioError(
            "AUDIO_TOO_LONG",
            f"audio is {seconds:.0f} s, longer than the {max_seconds:g} s a Transcribe call may carry: "
            "split it or use StreamingTranscribe",
        )
    audio = np.concatenate([resampler.feed(data), resampler.flush()])
    if audio.size == 0:
        raise AudioError("EMPTY_AUDIO", "audio_content holds no whole sample")
    return audio
