"""Makes tests/data/read_speech_lj001.ogg: eight consecutive LJSpeech sentences (LJ001-0001 to -0008,
public domain) read by one speaker, 0.8 s apart, as 16 kHz mono Opus in Ogg (about 170 KB).

    python tests/data/make_real_speech.py /path/to/shared/audio

The tests only read the committed file; this records how it was made. See tests/data/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

from services.common.audio import SAMPLE_RATE, decode_container

SENTENCES = [f"ljspeech/LJ001-{i:04d}.wav" for i in range(1, 9)]
GAP_S = 0.8
OUT = Path(__file__).resolve().parent / "read_speech_lj001.ogg"


def main(audio_dir: Path) -> None:
    gap = np.zeros(round(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts = [gap]
    for name in SENTENCES:
        parts += [decode_container((audio_dir / name).read_bytes(), 3600), gap]
    audio = np.concatenate(parts)
    with av.open(str(OUT), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = 24_000
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    print(f"{OUT.name}: {audio.size / SAMPLE_RATE:.1f} s, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/audio"))
