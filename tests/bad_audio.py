"""Bad and hostile audio files, built in memory so the tests need no binary fixtures for them.

Each builder returns the bytes of a real file that FFmpeg parses the way a client's file would be.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile

import av
import numpy as np

_FLAC_BLOCK = 65535  # the largest block FLAC allows: one frame of 16 bytes stands for 4 s of 16 kHz audio


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC codes frame numbers like UTF-8 code points."""
    return chr(n).encode("utf-8", "surrogatepass")


def flac_bomb(seconds: float, rate: int = 16000, declare_length: bool = True) -> bytes:
    """A FLAC file of `seconds` of silence, each 65535-sample frame a 16-byte CONSTANT subframe.

    10 h at 16 kHz is about 140 KB. With `declare_length=False` STREAMINFO says "length unknown", so
    only decoding can tell how long it is: the shape of a decompression bomb that lies about itself.
    """
    frames = int(seconds * rate) // _FLAC_BLOCK
    total = frames * _FLAC_BLOCK if declare_length else 0
    info = struct.pack(">HH", _FLAC_BLOCK, _FLAC_BLOCK) + b"\0\0\0" + b"\0\0\0"
    # sample rate (20 bits), channels-1 (3), bits-1 (5), total samples (36)
    packed = (rate << 44) | (0 << 41) | (15 << 36) | total
    info += packed.to_bytes(8, "big") + b"\0" * 16  # no MD5
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    for n in range(frames):
        # sync + fixed blocksize; blocksize from a 16-bit field at the end; rate from STREAMINFO (0000);
        # mono (0000), 16 bits (100), reserved 0
        header = bytes([0xFF, 0xF8, 0x70, 0x08]) + _utf8_number(n) + struct.pack(">H", _FLAC_BLOCK - 1)
        header += bytes([_crc8(header)])
        frame = header + b"\x00" + b"\x00\x00"  # CONSTANT subframe, value 0
        out += frame + struct.pack(">H", _crc16(frame))
    return bytes(out)


def encode_audio(samples: np.ndarray, rate: int, codec: str, container: str, bit_rate: int | None = None) -> bytes:
    """`samples` (channels x n, float in [-1, 1]) encoded by FFmpeg's `codec` into `container`."""
    channels = samples.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        if bit_rate:
            stream.bit_rate = bit_rate
        # Float samples stay float (NaN must reach a float WAV as NaN); PyAV converts them for other encoders.
        fmt = "flt" if stream.format.name.startswith("flt") else "s16"
        data = samples.astype(np.float32) if fmt == "flt" else (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        step = 1024
        for i in range(0, data.shape[1], step):
            array = data[:, i : i + step].T.reshape(1, -1).copy()
            frame = av.AudioFrame.from_ndarray(array, format=fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def wav_bytes(samples: np.ndarray, rate: int, codec: str = "pcm_s16le") -> bytes:
    return encode_audio(samples, rate, codec, "wav")


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.vstack([0.3 * np.sin(2 * np.pi * 440 * t)] * channels)


def nan_float_wav() -> bytes:
    """A 32-bit float WAV with NaN and infinite samples in it."""
    samples = tone(1.0)
    samples[0, 100:200] = np.nan
    samples[0, 300] = np.inf
    return wav_bytes(samples, 16000, "pcm_f32le")


def zero_channel_wav() -> bytes:
    """A WAV whose fmt chunk says 0 channels."""
    data = b"\0" * 3200
    fmt = struct.pack("<HHIIHH", 1, 0, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def video_without_audio(seconds: float = 0.5) -> bytes:
    """An MP4 with one MPEG-4 video track and no audio track."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def wav_with_unknown_codec() -> bytes:
    """A WAV whose fmt chunk names a codec tag (0x1234) no decoder knows."""
    samples = tone(0.5)
    data = bytearray(wav_bytes(samples, 16000))
    data[20:22] = (0x1234).to_bytes(2, "little")
    return bytes(data)


def _wav_layout(wav: bytes) -> tuple[int, int]:
    """Where a canonical WAV's audio starts, and its bytes per second (fmt the first chunk, data the second)."""
    return wav.index(b"data") + 8, struct.unpack_from("<I", wav, 28)[0]


def cut_wav(wav: bytes, keep_s: float) -> bytes:
    """The WAV as an upload that broke off `keep_s` into its audio: the header still declares all of it."""
    start, byte_rate = _wav_layout(wav)
    return wav[: start + int(keep_s * byte_rate)]


def unknown_length_wav(wav: bytes, marker: int) -> bytes:
    """The WAV as a tool streaming it to a pipe writes it: RIFF and data sizes set to `marker`, as it could
    not seek back to fill them in (0 or 0xFFFFFFFF by most, 0x7FFFF000 by sox)."""
    start, _ = _wav_layout(wav)
    out = bytearray(wav)
    out[4:8] = out[start - 4 : start] = struct.pack("<I", marker)
    return bytes(out)


def m4a_bytes(wav: bytes) -> bytes:
    """The audio of `wav` as AAC in an M4A with its moov atom first, as phones and `-movflags faststart`
    write it: a cut file keeps the header that declares the duration. (FFmpeg moves the atom by rewriting
    the file, so it is written to a temporary file, not to memory.)"""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "audio.m4a")
        with av.open(io.BytesIO(wav), "r") as source, av.open(path, "w", options={"movflags": "faststart"}) as out:
            stream = out.add_stream("aac", rate=16000, layout="mono")
            assert isinstance(stream, av.AudioStream)
            for frame in source.decode(audio=0):
                frame.pts = None
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        with open(path, "rb") as f:
            return f.read()
