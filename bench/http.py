"""What the HTTP layer adds to a Transcribe: the same 10 s clip through gRPC and through the
OpenAI-compatible endpoint (official `openai` SDK), alternating, on a one-worker fleet.

    make bench-http           (or: .venv/bin/python -m bench.http [--rounds 10] [--audio DIR])

The clip is the first 10 s of real speech from ../shared/audio (LJ Speech), or of tests/data/speech_long.wav
when that folder is missing. Reports the median wall time of each path, the difference (the HTTP layer:
multipart upload, one more hop to the gateway, JSON out) and the ratio HTTP / gRPC. Writes a Markdown table
to stdout and to bench/results/http.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
from scribe_client import ScribeClient

from bench.fleet import ROOT, fleet, free_port, wav_bytes
from services.common.audio import SAMPLE_RATE, decode_container

DEFAULT_AUDIO = ROOT.parent / "shared" / "audio"
CLIP_S = 10.0


def ten_seconds(audio: Path) -> tuple[bytes, str]:
    """A WAV of exactly CLIP_S seconds of speech, and where it came from."""
    sources = sorted((audio / "ljspeech").glob("LJ001-000[12].wav")) if audio.is_dir() else []
    if not sources:
        sources = [ROOT / "tests" / "data" / "speech_long.wav"]
    samples = np.concatenate([decode_container(p.read_bytes(), max_seconds=600) for p in sources])
    wanted = int(CLIP_S * SAMPLE_RATE)
    if len(samples) < wanted:
        samples = np.tile(samples, wanted // len(samples) + 1)
    return wav_bytes(samples[:wanted]), ", ".join(p.name for p in sources)


def _http_ready(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}/api/status", timeout=2) as answer:
                if json.load(answer)["workers"]:
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the HTTP server on {address} did not come up")


def run(rounds: int, audio: Path) -> str:
    clip, source = ten_seconds(audio)
    http = f"127.0.0.1:{free_port()}"
    grpc_s: list[float] = []
    http_s: list[float] = []
    with fleet(workers=1, HTTP_ADDRESS=http) as f:
        _http_ready(http)
        api = openai.OpenAI(base_url=f"http://{http}/v1", api_key="none", max_retries=0, timeout=300)
        with ScribeClient(f.address) as client:
            for i in range(rounds + 1):  # round 0 warms both paths up and is not counted
                started = time.perf_counter()
                grpc_text = client.transcribe(clip).transcript
                grpc_elapsed = time.perf_counter() - started
                started = time.perf_counter()
                http_text = api.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip)).text
                http_elapsed = time.perf_counter() - started
                assert http_text == grpc_text, (http_text, grpc_text)
                if i:
                    grpc_s.append(grpc_elapsed)
                    http_s.append(http_elapsed)
    g, h = statistics.median(grpc_s), statistics.median(http_s)
    return "\n".join(
        [
            f"Transcribe of a {CLIP_S:g} s clip ({source}), 1 worker, median of {rounds} alternating rounds:",
            "",
            "| Path | Median ms | Min ms | HTTP adds ms | Ratio to gRPC |",
            "|---|---:|---:|---:|---:|",
            f"| gRPC (ScribeClient) | {g * 1000:.0f} | {min(grpc_s) * 1000:.0f} | | 1.00 |",
            f"| HTTP (openai SDK, json) | {h * 1000:.0f} | {min(http_s) * 1000:.0f} | {(h - g) * 1000:.0f} | {h / g:.3f} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    args = parser.parse_args()
    text = run(args.rounds, args.audio)
    print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "http.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
