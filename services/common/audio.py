"""Audio in, 16 kHz mono float32 out: what every Whisper engine wants.

Containers are decoded with PyAV (the FFmpeg binding faster-whisper itself uses); raw LINEAR16 is
resampled with PyAV's swresample. A small file that expands to hours of audio (a decompression bomb)
costs little: a container whose header declares too long a duration is refused before any decoding,
and decoding stops as soon as the audio passes either its allowed length or `max_ratio` times the size
of the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import structlog

from services.common import truncation

log = structlog.get_logger()

SAMPLE_RATE = 16_000
#: Energy frames for finding where to cut audio (a pause between words): 20 ms.
FRAME = SAMPLE_RATE // 50
SUPPORTED_SAMPLE_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_CHANNELS = 2
_LAYOUTS = {1: "mono", 2: "stereo"}
#: Bytes per second of what decoding produces (16 kHz mono 16-bit): the unit of the decode ratio.
DECODED_BYTES_PER_S = 2 * SAMPLE_RATE
#: Audio every file may decode to, whatever its size: the decode ratio only limits what comes after.
RATIO_FREE_SECONDS = 60.0
#: Containers whose header gives the exact duration. Others (mp3, ADTS, WAV) get theirs estimated from the
#: bitrate or from a size field a truncated file still carries, which can be wildly high: only decoding tells.
_EXACT_DURATION_FORMATS = {"flac", "ogg", "matroska", "webm", "mov", "mp4", "m4a"}


@dataclass(frozen=True)
class AudioError(Exception):
    """The audio cannot be used. `reason` is a stable machine-readable code, `message` says what to do."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


_NOTHING = np.zeros(0, dtype=np.int16)


def _to_float(frames: list[np.ndarray]) -> np.ndarray:
    """Join int16 chunks into float32 in [-1, 1), freeing each chunk as it is copied.

    Peak memory is the chunks plus one float32 array (6 bytes a sample), not the 12 that
    concatenate-then-convert needs: it matters for a two-hour file.
    """
    out = np.empty(sum(f.size for f in frames), dtype=np.float32)
    pos = 0
    for i, chunk in enumerate(frames):
        out[pos : pos + chunk.size] = chunk
        pos += chunk.size
        frames[i] = _NOTHING
    frames.clear()
    out *= 1.0 / 32768.0
    return out


def _too_long(max_seconds: float, seconds: float | None = None) -> AudioError:
    length = f"audio is {seconds:.0f} s, longer than" if seconds is not None else "audio is longer than"
    return AudioError(
        "AUDIO_TOO_LONG",
        f"{length} the {max_seconds:g} s a Transcribe call may carry: split it or use StreamingTranscribe",
    )


def declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """How long the header says the audio is; None when it does not say exactly (the decoder will tell)."""
    if not _EXACT_DURATION_FORMATS.intersection(container.format.name.split(",")):
        return None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def decode_budget_seconds(size: int, max_seconds: float, max_ratio: float) -> float:
    """Audio a file of `size` bytes may decode to: MAX_AUDIO_SECONDS, or less for a tiny file."""
    if max_ratio <= 0:
        return max_seconds
    return min(max_seconds, max(RATIO_FREE_SECONDS, max_ratio * size / DECODED_BYTES_PER_S))


def _check_finite(frame: av.AudioFrame) -> None:
    # Float PCM can carry NaN or infinity, which swresample would turn into full-scale clicks (and a
    # resampling filter smears over its neighbours): refuse the file instead of transcribing noise.
    if not np.isfinite(frame.to_ndarray()).all():
        raise AudioError(
            "NON_FINITE_SAMPLES",
            "the audio holds NaN or infinite float samples: fix or re-export the file (e.g. as 16-bit PCM)",
        )


def iter_container(
    source: bytes | str | os.PathLike[str], max_seconds: float, max_ratio: float = 0.0
) -> Iterator[np.ndarray]:
    """Decode any container FFmpeg reads, yielding 16 kHz mono int16 chunks as they come.

    `source` is the file's bytes or its path: a spooled upload is read from disk, never whole into memory.
    Refuses audio over `max_seconds` (AUDIO_TOO_LONG) and, when `max_ratio` > 0, a file that decodes to
    more than `max_ratio` times its own size past its first minute (DECODED_SIZE_TOO_LARGE). A file that
    holds less audio than its header promises (services.common.truncation) raises TRUNCATED_AUDIO after its
    last chunk: a consumer decoding piece by piece learns it before it delivers a final result.
    """
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if not size:
        raise AudioError("EMPTY_AUDIO", "audio_content is empty: send the bytes of an audio file")
    budget = decode_budget_seconds(size, max_seconds, max_ratio)
    limit = int(budget * SAMPLE_RATE)
    total = 0
    promised: float | None = None
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        with av.open(opened, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("NO_AUDIO_STREAM", "the file has no audio track: send a file with an audio stream")
            stream = container.streams.audio[0]
            declared = declared_seconds(container, stream)
            if declared is not None and declared > max_seconds + 1:
                raise _too_long(max_seconds, declared)  # before a single frame is decoded
            if stream.codec_context is None:  # a codec tag FFmpeg has no decoder for
                raise AudioError(
                    "UNDECODABLE_AUDIO",
                    "FFmpeg has no decoder for this file's audio codec: send wav, flac, mp3, ogg or m4a",
                )
            promised = truncation.promised_seconds(source, container, stream)
            check_floats = stream.codec_context.name.startswith("pcm_f")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                if check_floats:
                    _check_finite(frame)
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += chunk.size
                    if total > limit:
                        if budget < max_seconds:
                            raise AudioError(
                                "DECODED_SIZE_TOO_LARGE",
                                f"the {size}-byte file decodes to more than {budget:.0f} s of audio, over "
                                f"{max_ratio:g} times its size (MAX_DECODE_RATIO): send it as FLAC or LINEAR16, "
                                "or trim the silence",
                            )
                        raise _too_long(max_seconds)
                    yield chunk
            for out in resampler.resample(None):
                chunk = out.to_ndarray().reshape(-1)
                total += chunk.size
                yield chunk
            _check_whole(promised, total)
    except AudioError:
        raise
    except Exception as exc:
        # A cut-off FLAC or MP4 ends in a partial packet the decoder rejects: what came before it is the
        # audio the file holds, and the header says how much is missing.
        _check_whole(promised, total)
        # Hostile files reach corners of FFmpeg and PyAV that raise all sorts of exceptions; whatever it
        # is, the file could not be decoded, and the worker must answer that rather than INTERNAL.
        if not isinstance(exc, (av.error.FFmpegError, ValueError, IndexError, OSError)):
            log.warning("decode_failed_unexpectedly", error=repr(exc), exc_info=True)
        raise AudioError(
            "UNDECODABLE_AUDIO",
            f"could not decode the audio ({exc.__class__.__name__}): send a wav, flac, mp3, ogg or m4a "
            "file, or raw PCM with encoding LINEAR16 and sample_rate_hertz",
        ) from None


def _check_whole(promised_s: float | None, samples: int) -> None:
    if message := truncation.shortfall(promised_s, samples / SAMPLE_RATE):
        raise AudioError("TRUNCATED_AUDIO", message)


def decode_container(data: bytes, max_seconds: float, max_ratio: float = 0.0) -> np.ndarray:
    """Decode any container FFmpeg reads into 16 kHz mono float32 (see `iter_container`)."""
    audio = _to_float(list(iter_container(data, max_seconds, max_ratio)))
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
        raise _too_long(max_seconds, seconds)
    audio = np.concatenate([resampler.feed(data), resampler.flush()])
    if audio.size == 0:
        raise AudioError("EMPTY_AUDIO", "audio_content holds no whole sample")
    return audio


def iter_linear16(
    source: bytes | str | os.PathLike[str],
    sample_rate_hertz: int,
    channels: int,
    max_seconds: float,
    chunk_bytes: int = 1 << 20,
) -> Iterator[np.ndarray]:
    """LINEAR16 bytes or file to 16 kHz mono int16 chunks, reading `chunk_bytes` at a time."""
    resampler = PcmResampler(sample_rate_hertz, channels)
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if not size:
        raise AudioError("EMPTY_AUDIO", "audio_content is empty: send LINEAR16 samples")
    seconds = size / (2 * resampler.channels * sample_rate_hertz)
    if seconds > max_seconds:
        raise _too_long(max_seconds, seconds)

    def as_int16(samples: np.ndarray) -> np.ndarray:
        return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)

    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as data:
        while chunk := data.read(chunk_bytes):
            yield as_int16(resampler.feed(chunk))
    yield as_int16(resampler.flush())


def frame_energy(audio: np.ndarray) -> np.ndarray:
    """RMS of each whole 20 ms frame (float or int16 samples: only the order matters)."""
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME)
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
