"""Audio a container's header promises, and the check that the file's bytes held it.

An upload that broke off still carries a header saying how long the recording is. Decoding what is
there and calling it the recording would answer a cut-off file with a short or empty transcript, as if
the speaker had stopped: the client could not tell a broken upload from silence. So the length the
header promises is compared with the length decoded, and a file short of its promise is refused
(TRUNCATED_AUDIO).

Only headers that state an exact length count: a WAV data chunk's size, FLAC STREAMINFO's total samples,
an MP4/M4A/MOV track's sample table. FFmpeg sizes a WAV by the bytes present when its data chunk reaches
past the end of the file, so the chunk size is read here, and a WAV is checked only when bytes are missing.
Other containers (mp3, Ogg, Matroska) give estimates or nothing, and are not checked.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

import av

#: Data chunk sizes that mean "length unknown": written by tools that stream a WAV to a pipe and cannot
#: seek back to fill the size in (0 and 0xFFFFFFFF by most, 0x7FFFF000 by sox). Such a WAV is whatever
#: its bytes hold.
UNKNOWN_WAV_DATA_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFF000})
#: Shortfall a file may have without being refused: headers round, and resampling and codec priming move
#: the decoded length by a few milliseconds. The larger of the two applies.
TOLERANCE_S = 0.1
TOLERANCE_RATIO = 0.01
#: Chunks looked at before the data chunk, beyond which a WAV is left unchecked rather than read further.
_MAX_WAV_CHUNKS = 64
#: WAV format tags whose bytes are fixed-size frames: PCM, IEEE float, A-law, mu-law, and extensible.
_PCM_TAGS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})
#: FFmpeg format names whose audio stream duration comes from the header's sample table or sample count.
_DECLARING_FORMATS = {"flac", "mov", "mp4", "m4a"}


def wav_declared_seconds(data: BinaryIO) -> float | None:
    """Seconds a RIFF/WAVE header's data chunk declares, when that chunk runs past the end of the file; None
    when the file is not RIFF/WAVE, the chunk fits, its size is an "unknown length" marker, or the header is
    unreadable. Only bytes missing from the file count, so a header with a wrong byte rate never makes a
    whole file look cut."""
    head = data.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None  # RF64 and BW64 keep their real size elsewhere, and say 0xFFFFFFFF here
    byte_rate = 0
    for _ in range(_MAX_WAV_CHUNKS):
        chunk = data.read(8)
        if len(chunk) < 8:
            return None
        tag, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if tag == b"data":
            if size in UNKNOWN_WAV_DATA_SIZES or byte_rate <= 0 or data.tell() + size <= data.seek(0, io.SEEK_END):
                return None
            return size / byte_rate
        if tag == b"fmt ":
            body = data.read(size)
            if len(body) < 16:
                return None
            byte_rate = _wav_byte_rate(body)
            size = 0
        data.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to an even length
    return None


def _wav_byte_rate(fmt: bytes) -> int:
    """Bytes per second of a fmt chunk's audio: what FFmpeg decodes PCM by (block size times frame rate), or
    the header's stated average for compressed codecs."""
    tag, _, rate, average, block = struct.unpack("<HHIIH", fmt[:14])
    return block * rate if tag in _PCM_TAGS else average


def promised_seconds(
    source: bytes | str | os.PathLike[str], container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    """Seconds of audio the file's header promises exactly; None when it does not say (see the module)."""
    formats = set(container.format.name.split(","))
    if "wav" in formats:
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as data:
            try:
                return wav_declared_seconds(data)
            except (OSError, struct.error):
                return None
    if formats & _DECLARING_FORMATS and stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def shortfall(declared_s: float | None, decoded_s: float) -> str | None:
    """The TRUNCATED_AUDIO message when the decoded audio falls short of what the header promised, else None."""
    if declared_s is None or decoded_s >= declared_s - max(TOLERANCE_S, TOLERANCE_RATIO * declared_s):
        return None
    return (
        f"the file's header declares {declared_s:.2f} s of audio but its bytes hold only {decoded_s:.2f} s: "
        "the file or its upload was cut short; send the whole file"
    )
