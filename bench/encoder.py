"""Encoder-length sweep (`make bench-encoder`; `make bench` runs it too): for each encoder input length
(bucket), the encoder's milliseconds per window and the WER of every clip that fits that length, encoded
at that length and at Whisper's 30 s, on each engine, in one run. A bucket is kept where the WER of all
its sets' clips together is within `--tolerance` points of the 30 s encode (one set alone holds too few
words for a 0.3-point rule: one word is a point); ENCODER_MIN_SECONDS' default is the shortest bucket
from which every longer one is kept.

Sets: `recorded` is ../shared/audio (real speech, references in manifest.tsv); `noisy` is the same
clips with white noise at 10 dB SNR (a fixed seed), recordings of our own in harder conditions;
`espeak` is sentences of those references spoken by espeak-ng in three voices (synthetic: it shows
whether a change only holds on real voices), made at run time when espeak-ng and sox are installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.batching import RESULTS, Clip, load_clips
from bench.fleet import ROOT
from bench.stream_metrics import wer
from services.common.audio import SAMPLE_RATE, decode_container
from services.common.config import Settings
from services.gpu_worker.batching.scheduler import BatchScheduler
from services.gpu_worker.batching.transcriber import Transcriber
from services.gpu_worker.engines.base import WINDOW_SECONDS, DecodeOptions
from services.gpu_worker.engines.encoder_length import BUCKETS_S, MARGIN_S, EncoderLengths
from services.gpu_worker.engines.whisper_windows import WhisperWindowEngine

VOICES = ("en-us", "en-gb-scotland", "en-us+f3")
SNR_DB = 10.0


@dataclass(frozen=True)
class Bucket:
    engine: str
    seconds: float
    encode_ms: float
    words: dict[str, int]  # per set: reference words of the clips that fit
    wer_at: dict[str, float]  # per set: WER encoded at this length
    wer_30: dict[str, float]  # per set: WER of the same clips encoded at 30 s
    decode_ms: float  # wall time per clip, decoded at this length
    decode_ms_30: float

    def pooled(self, wers: dict[str, float]) -> float:
        """WER over every set's clips together (errors over reference words)."""
        return sum(wers[s] * self.words[s] for s in wers) / max(1, sum(self.words[s] for s in wers))

    def kept(self, tolerance: float) -> bool:
        return self.pooled(self.wer_at) <= self.pooled(self.wer_30) + tolerance


def noisy(clips: list[Clip], snr_db: float = SNR_DB) -> list[Clip]:
    rng = np.random.default_rng(0)
    out = []
    for c in clips:
        power = float(np.mean(c.audio**2)) or 1e-8
        noise = rng.normal(0.0, (power / 10 ** (snr_db / 10)) ** 0.5, c.audio.size).astype(np.float32)
        out.append(Clip(c.audio + noise, c.text))
    return out


def espeak(clips: list[Clip], limit: int) -> list[Clip]:
    """The first `limit` references, each said by one of VOICES in turn; [] without espeak-ng and sox."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        print("espeak-ng or sox missing: no `espeak` set", file=sys.stderr)
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        for i, c in enumerate(clips[:limit]):
            subprocess.run(
                ["espeak-ng", "-v", VOICES[i % len(VOICES)], "-s", "160", "-w", str(raw), c.text], check=True
            )
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
            out.append(Clip(decode_container(wav.read_bytes(), 60), c.text))
    return out


def load_engine(kind: str, threads: int) -> WhisperWindowEngine:
    settings = Settings.from_env(
        {"SCRIBE_ENV_FILE": "/nonexistent", "WHISPER_CPU_THREADS": str(threads), "WHISPER_DEVICE": "cpu"}
    )
    if kind == "torch":
        from services.gpu_worker.engines.torch_engine import TorchWhisperEngine

        return TorchWhisperEngine(settings)
    from services.gpu_worker.engines.faster_whisper_engine import FasterWhisperEngine

    return FasterWhisperEngine(settings)


@contextmanager
def transcriber(engine: WhisperWindowEngine) -> Iterator[Transcriber]:
    scheduler = BatchScheduler(engine, max_batch=16, window_s=0.0)
    try:
        yield Transcriber(scheduler)
    finally:
        scheduler.close()


def encode_ms(engine: WhisperWindowEngine, runs: int = 5) -> dict[float, float]:
    """Median time of the encoder alone for one window of each bucket's input (batch of one), the buckets
    measured in turn, round after round, so that a change in the machine's load falls on all of them."""
    features = {
        b: engine._features(np.zeros(round(b * SAMPLE_RATE), dtype=np.float32), round(b * 100))[None] for b in BUCKETS_S
    }
    times: dict[float, list[float]] = {b: [] for b in BUCKETS_S}
    for f in features.values():
        engine._encode(f)  # warm-up
    for _ in range(runs):
        for b, f in features.items():
            started = time.perf_counter()
            engine._encode(f)
            times[b].append(time.perf_counter() - started)
    return {b: statistics.median(t) * 1000 for b, t in times.items()}


def decode_pairs(
    engine: WhisperWindowEngine, clips: list[Clip], seconds: float, margin: float
) -> tuple[list[str], list[str], float, float]:
    """Each clip's transcript (beam 5, as Transcribe decodes it) at `seconds` and at 30 s, one after the
    other clip by clip, so that both see the same load; and the wall seconds each length took."""
    at: list[str] = []
    full: list[str] = []
    took_at, took_full = 0.0, 0.0
    with transcriber(engine) as t:
        for c in clips:
            for lengths, texts in (
                (EncoderLengths(seconds, margin), at),
                (EncoderLengths(WINDOW_SECONDS, margin), full),
            ):
                engine.lengths = lengths
                started = time.perf_counter()
                texts.append(t.transcribe(c.audio, DecodeOptions()).text)
                if texts is at:
                    took_at += time.perf_counter() - started
                else:
                    took_full += time.perf_counter() - started
    return at, full, took_at, took_full


def sweep(kind: str, sets: dict[str, list[Clip]], threads: int, margin: float) -> list[Bucket]:
    engine = load_engine(kind, threads)
    fits_30 = {
        name: [c for c in clips if c.audio.size / SAMPLE_RATE <= WINDOW_SECONDS - margin]
        for name, clips in sets.items()
    }
    buckets = []
    for seconds in BUCKETS_S:
        words, wer_at, wer_30 = {}, {}, {}
        wall, wall30, count = 0.0, 0.0, 0
        for name, clips in fits_30.items():
            chosen = [c for c in clips if c.audio.size / SAMPLE_RATE + margin <= seconds]
            if not chosen:
                continue
            at, full, took_at, took_full = decode_pairs(engine, chosen, seconds, margin)
            refs = [c.text for c in chosen]
            words[name] = sum(len(r.split()) for r in refs)
            wer_at[name], wer_30[name] = wer(refs, at), wer(refs, full)
            wall, wall30, count = wall + took_at, wall30 + took_full, count + len(chosen)
        if not count:
            continue
        bucket = Bucket(kind, seconds, 0.0, words, wer_at, wer_30, 1000 * wall / count, 1000 * wall30 / count)
        print(bucket, file=sys.stderr, flush=True)
        buckets.append(bucket)
    costs = encode_ms(engine)
    return [replace(b, encode_ms=costs[b.seconds]) for b in buckets]


def chosen_minimum(buckets: list[Bucket], tolerance: float) -> float:
    """The shortest bucket from which every longer one is kept."""
    minimum = WINDOW_SECONDS
    for b in sorted(buckets, key=lambda b: -b.seconds):
        if not b.kept(tolerance):
            break
        minimum = b.seconds
    return minimum


def markdown(buckets: list[Bucket], sets: dict[str, list[Clip]], tolerance: float, margin: float, threads: int) -> str:
    names = list(sets)
    load = os.getloadavg()[0]
    out = [
        f"Machine: {threads} CPU threads, no GPU (load average {load:.1f} at the end). Model: embedded tiny.en "
        "(CTranslate2 int8; torch float32), beam 5, decoded as `Transcribe` decodes (cut at silences, "
        "temperature fallback). Each bucket: the clips whose length plus the "
        f"{margin:g} s margin fits it, encoded at that length and at 30 s. Sets: "
        + ", ".join(f"{n} ({len(sets[n])} clips)" for n in names)
        + f". Kept: the WER of all sets together within {tolerance} point of the 30 s encode.",
        "",
        "| Engine | Encoder input s | Encoder ms/window | Decode ms/clip | Same clips at 30 s, ms/clip | "
        + " | ".join(f"{n}: words, WER % (at 30 s)" for n in names)
        + " | All: WER % (at 30 s) | Kept |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|---|",
    ]
    for b in buckets:
        cells = [f"{b.words[n]}, {b.wer_at[n]:.2f} ({b.wer_30[n]:.2f})" if n in b.words else "-" for n in names]
        out.append(
            f"| {b.engine} | {b.seconds:g} | {b.encode_ms:.0f} | {b.decode_ms:.0f} | {b.decode_ms_30:.0f} | "
            + " | ".join(cells)
            + f" | {b.pooled(b.wer_at):.2f} ({b.pooled(b.wer_30):.2f}) | {'yes' if b.kept(tolerance) else 'no'} |"
        )
    engines = sorted({b.engine for b in buckets})
    out += [""] + [
        f"{e}: shortest length kept from there up: {chosen_minimum([b for b in buckets if b.engine == e], tolerance):g} s."
        for e in engines
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--engines", default="ctranslate2,torch", help="ctranslate2 and/or torch (if installed)")
    parser.add_argument("--sets", default="recorded,noisy,espeak")
    parser.add_argument("--margin", type=float, default=MARGIN_S, help="silence after a window, at least")
    parser.add_argument("--tolerance", type=float, default=0.3, help="WER points a kept bucket may lose")
    parser.add_argument("--torch-sets", default="recorded", help="sets the (slower) torch engine runs")
    parser.add_argument("--espeak-clips", type=int, default=47)
    parser.add_argument("--limit", type=int, default=0, help="only the first N recorded clips: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder.md")
    args = parser.parse_args()
    if not (args.audio_dir / "manifest.tsv").is_file():
        sys.exit(f"no recorded speech at {args.audio_dir} (expects manifest.tsv): pass --audio-dir")
    threads = len(os.sched_getaffinity(0))
    recorded = load_clips(args.audio_dir)
    if args.limit:
        recorded, args.espeak_clips = recorded[: args.limit], min(args.espeak_clips, args.limit)
    makers = {
        "recorded": lambda: recorded,
        "noisy": lambda: noisy(recorded),
        "espeak": lambda: espeak(recorded, args.espeak_clips),
    }
    sets = {name: makers[name]() for name in args.sets.split(",")}
    sets = {name: clips for name, clips in sets.items() if clips}
    buckets: list[Bucket] = []
    for kind in args.engines.split(","):
        if kind == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                print("torch is not installed (make test-torch installs it): torch engine skipped", file=sys.stderr)
                continue
            chosen = {n: c for n, c in sets.items() if n in args.torch_sets.split(",")}
        else:
            chosen = sets
        buckets += sweep(kind, chosen, threads, args.margin)
    text = markdown(buckets, sets, args.tolerance, args.margin, threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
