"""What the realtime WebSocket adds over gRPC: K = 1, 4, 8 concurrent sessions of `/v1/realtime` against
the same number of gRPC StreamingTranscribe streams, on the same fleet and audio, sent at real time in
100 ms chunks. For each path: end-of-speech to final (per utterance, from the moment its last audio was
sent until its final text arrived: the `completed` event on the WebSocket, the last final word on gRPC)
p50/p95, and the WER of the final text against a Transcribe of the same audio. Writes
bench/results/realtime.md and prints it.

    make bench-realtime            (or: .venv/bin/python -m bench.realtime [--ks 1,4,8] [--seconds 40] [--rounds 2])

The gRPC streams use the very StreamingConfig the WebSocket session opens (server VAD, interims, words),
so the two differ by the HTTP hop alone: JSON and base64 in, the bridge, one more gRPC hop to the gateway.
Rounds alternate which path goes first. Audio: recorded speech from ../shared/audio (manifest.tsv), clips
one after another 1.5 s apart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import websockets

from bench.fleet import ROOT, fleet, free_port, wav_bytes
from bench.stream_metrics import Received, final_latencies, markdown_table, nearest, percentile, utterances, wer
from bench.streaming import SPEECH_END_S, load_clips, program
from services.common.audio import SAMPLE_RATE
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc
from services.http_api.realtime.config import SessionSettings, stream_config

CHUNK_S = 0.1
TARGET_ADDED_MS = 50.0
SETTINGS = SessionSettings(rate=SAMPLE_RATE)  # OpenAI's defaults: server VAD 0.5, 300 ms, 500 ms


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    text: str = ""
    error: str = ""


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def grpc_stream(stub: transcription_pb2_grpc.TranscriptionServiceStub, audio: np.ndarray) -> Run:
    pcm, step = _pcm(audio), round(CHUNK_S * SAMPLE_RATE) * 2
    clock = {"t0": 0.0}

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(streaming_config=stream_config(SETTINGS))
        clock["t0"] = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            delay = clock["t0"] + (k + 1) * CHUNK_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield pb.StreamingTranscribeRequest(audio_content=pcm[i : i + step])

    results: list[Received] = []
    run = Run()
    try:
        for response in stub.StreamingTranscribe(requests(), timeout=3600):
            arrived = time.monotonic() - clock["t0"]
            for r in response.results:
                if r.is_final:
                    words = [
                        (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.word)
                        for w in r.alternatives[0].words
                    ]
                    results.append(Received(arrived, True, 0.0, 0.0, r.alternatives[0].transcript, words))
    except grpc.RpcError as err:
        run.error = f"{err.code().name}: {err.details()}"
    run.latencies = final_latencies(utterances(audio, SPEECH_END_S), results)
    run.text = " ".join(r.text for r in results)
    return run


async def ws_session(address: str, audio: np.ndarray) -> Run:
    pcm, step = _pcm(audio), round(CHUNK_S * SAMPLE_RATE) * 2
    run = Run()
    update = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "turn_detection": {"type": "server_vad"},
                }
            },
        },
    }
    spans: dict[str, list[float]] = {}
    done: dict[str, tuple[float, str]] = {}
    try:
        async with websockets.connect(f"ws://{address}/v1/realtime?intent=transcription", max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps(update))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            t0 = time.monotonic()

            async def send() -> None:
                for k, i in enumerate(range(0, len(pcm), step)):
                    chunk = base64.b64encode(pcm[i : i + step]).decode()
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                    delay = t0 + (k + 1) * CHUNK_S - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                # The end of the audio: the commit makes the rest final, and the session.updated after it
                # comes once every item of the committed audio is complete.
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))

            sender = asyncio.create_task(send())
            async with asyncio.timeout(len(pcm) / 2 / SAMPLE_RATE + 600):
                while True:
                    event, arrived = json.loads(await ws.recv()), time.monotonic() - t0
                    kind = event["type"]
                    if kind == "session.updated":
                        break
                    if kind == "input_audio_buffer.speech_started":
                        spans[event["item_id"]] = [event["audio_start_ms"] / 1000, float("nan")]
                    elif kind == "input_audio_buffer.speech_stopped":
                        spans.setdefault(event["item_id"], [0.0, 0.0])[1] = event["audio_end_ms"] / 1000
                    elif kind.endswith("transcription.completed"):
                        done[event["item_id"]] = (arrived, event["transcript"])
                    elif kind == "error":
                        run.error = event["error"]["code"]
                        break
            sender.cancel()
    except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
        run.error = run.error or type(exc).__name__
    utts = utterances(audio, SPEECH_END_S)
    last: dict[int, float] = {}
    for item, (arrived, text) in done.items():
        if text.strip() and item in spans:
            i = nearest(utts, spans[item][1] - 0.2)
            last[i] = max(last.get(i, 0.0), arrived)
    run.latencies = [last[i] - utts[i].end for i in sorted(last)]
    run.text = " ".join(text for _, text in sorted(done.values()))
    return run


def grpc_batch(address: str, jobs: list[np.ndarray]) -> list[Run]:
    runs: list[Run] = [Run() for _ in jobs]
    with grpc.insecure_channel(address) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)

        def one(i: int) -> None:
            runs[i] = grpc_stream(stub, jobs[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return runs


async def _ws_all(address: str, jobs: list[np.ndarray]) -> list[Run]:
    return list(await asyncio.gather(*(ws_session(address, a) for a in jobs)))


def _wait_http(address: str, timeout: float = 60) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the HTTP server on {address} did not come up")


def fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def run(ks: list[int], seconds: float, rounds: int, audio_dir: Path) -> str:
    clips = load_clips(audio_dir)
    http = f"127.0.0.1:{free_port()}"
    rows, added_rows = [], []
    load_before = os.getloadavg()[0]
    settings = {"HTTP_ADDRESS": http, "MAX_STREAMS_PER_CLIENT": "64", "STREAM_IDLE_TIMEOUT_S": "60"}
    with fleet(workers=2, settings=settings) as f, grpc.insecure_channel(f.address) as channel:
        stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
        _wait_http(http)
        for k in ks:
            jobs = [program(clips, i * len(clips) // k, seconds) for i in range(k)]
            refs = [
                stub.Transcribe(pb.TranscribeRequest(audio_content=wav_bytes(a)), timeout=600).transcript for a in jobs
            ]
            pooled: dict[str, list[Run]] = {"gRPC": [], "WebSocket": []}
            for r in range(rounds):
                order = ["gRPC", "WebSocket"] if r % 2 == 0 else ["WebSocket", "gRPC"]
                for path in order:
                    got = grpc_batch(f.address, jobs) if path == "gRPC" else asyncio.run(_ws_all(http, jobs))
                    pooled[path] += got
                    print(
                        f"K={k} round {r + 1} {path}: errors {[g.error for g in got if g.error]}",
                        file=sys.stderr,
                        flush=True,
                    )
            p95 = {}
            for path, runs in pooled.items():
                lat = [x for g in runs for x in g.latencies]
                texts = [g.text for g in runs]
                p95[path] = percentile(lat, 95)
                rows.append(
                    [
                        str(k),
                        path,
                        str(len(lat)),
                        fmt(percentile(lat, 50)),
                        fmt(p95[path]),
                        fmt(wer(refs * rounds, texts), 1),
                        str(sum(bool(g.error) for g in runs)),
                    ]
                )
            added = (p95["WebSocket"] - p95["gRPC"]) * 1000
            added_rows.append([str(k), fmt(added, 0), "yes" if added <= TARGET_ADDED_MS else "no"])
            print(f"K={k}: {rows[-2]} {rows[-1]}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    table = markdown_table(
        ["K", "path", "utterances", "end of speech → final p50 s", "p95 s", "WER vs Transcribe %", "failed sessions"],
        rows,
    )
    extra = markdown_table(["K", "WebSocket adds to p95, ms", f"≤ {TARGET_ADDED_MS:g} ms"], added_rows)
    return (
        f"Realtime WebSocket against gRPC streams: 2 workers (embedded model), {seconds:g} s of recorded speech per "
        f"session at real time, {rounds} round(s) per K alternating which path goes first; load average "
        f"{load_before:.1f} before, {load_after:.1f} after.\n\n{table}\n\n{extra}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "audio")
    args = parser.parse_args()
    text = run([int(k) for k in args.ks.split(",")], args.seconds, args.rounds, args.audio)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "realtime.md").write_text(text)


if __name__ == "__main__":
    main()
