"""The GPU check's encoder-length step: the buckets of ENCODER_MIN_SECONDS (docs/encoder.md) on the torch
engine in this process, on the device: the encoder's milliseconds per window at each input length, alone
and in a batch, and the WER of the committed clips that fit each length, encoded there and at 30 s. The
same measurements as `make bench-encoder`, on the committed clips (the GPU machine has no ../shared/audio)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.stream_metrics import wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.common.config import Settings
from services.gpu_worker.engines.base import WINDOW_SECONDS, DecodeOptions, WindowJob
from services.gpu_worker.engines.encoder_length import BUCKETS_S, MARGIN_S, EncoderLengths
from tests.helpers import SAID, clip

#: Committed clips with known words (tests/data/make_clips.sh), 3 to 25 s.
CLIPS = {
    "voice_3s.ogg": "Please send the report to the finance team before noon.",
    "voice_7s.ogg": "The museum opens at nine in the morning, and the guided tours start every half hour until the "
    "late afternoon.",
    "voice_10s.ogg": "Our train left the station ten minutes late because of a signal problem. The conductor "
    "apologised and promised that we would still arrive in time for the meeting in the city.",
    "voice_16s.ogg": "The garden behind the old library was planted more than a century ago. Every spring the "
    "volunteers clear the paths, repair the wooden benches and plant new flowers along the wall. Visitors are "
    "welcome on weekends, and children may feed the ducks in the pond.",
    "speech_long.wav": SAID["speech_long.wav"],
    "speech_short.wav": SAID["speech_short.wav"],
}


def step_buckets(add: Callable[[str], None], device: str, batch: int, left: Callable[[], float]) -> None:
    import torch

    from services.gpu_worker.engines.torch_engine import TorchWhisperEngine

    settings = Settings.from_env({"SCRIBE_ENV_FILE": "/nonexistent", "WHISPER_DEVICE": device})
    engine = TorchWhisperEngine(settings)
    audio = {name: decode_container(clip(name), 60) for name in CLIPS}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def encode_ms(seconds: float, n: int) -> float:
        frames = round(seconds * 100)
        one = engine._features(np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32), frames)
        features = np.stack([one] * n)
        times = []
        with torch.inference_mode():
            for i in range(6):
                sync()
                started = time.perf_counter()
                engine._encode(features)
                sync()
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000 / n

    def texts(seconds: float, names: list[str]) -> list[str]:
        engine.lengths = EncoderLengths(seconds)
        jobs = [WindowJob(audio[n], DecodeOptions(beam_size=5)) for n in names]
        return [" ".join(s.text for s in r.segments) for r in engine.decode_batch(jobs)]

    add(f"| encoder input s | ms/window, batch 1 | ms/window, batch {batch} | clips | WER % | WER % at 30 s |")
    add("|---|---|---|---|---|---|")
    fits = [n for n in CLIPS if audio[n].size / SAMPLE_RATE + MARGIN_S <= WINDOW_SECONDS]
    at_30 = dict(zip(fits, texts(WINDOW_SECONDS, fits), strict=True))
    for seconds in BUCKETS_S:
        if left() < 20:
            add(f"| {seconds:g} | skipped: out of time | | | | |")
            continue
        names = [n for n in fits if audio[n].size / SAMPLE_RATE + MARGIN_S <= seconds]
        refs = [CLIPS[n] for n in names]
        scored = (
            f"{len(names)} | {wer(refs, texts(seconds, names)):.2f} | {wer(refs, [at_30[n] for n in names]):.2f}"
            if names
            else "0 | - | -"
        )
        add(f"| {seconds:g} | {encode_ms(seconds, 1):.1f} | {encode_ms(seconds, batch):.1f} | {scored} |")
