"""Pure measurements of streamed results: utterances from the audio, latencies, revisions, WER."""

from __future__ import annotations

from dataclasses import dataclass, field

import jiwer
import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps
from whisper_normalizer.english import EnglishTextNormalizer

from services.common.audio import SAMPLE_RATE

_NORMALISE = EnglishTextNormalizer()


@dataclass(frozen=True)
class Utterance:
    start: float
    end: float


def utterances(audio: np.ndarray, speech_end_s: float, threshold: float = 0.5) -> list[Utterance]:
    """Speech stretches of the audio as Silero VAD sees them in one offline pass.

    An utterance ends where the speech probability first drops below the silence threshold and then
    stays there for `speech_end_s`: the same rule and model the server's end-of-speech uses, but
    run by faster-whisper's offline `get_speech_timestamps` over the whole recording, without padding.
    """
    options = VadOptions(
        threshold=threshold,
        min_silence_duration_ms=round(speech_end_s * 1000),
        speech_pad_ms=0,
        min_speech_duration_ms=0,
    )
    return [Utterance(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in get_speech_timestamps(audio, options)]


@dataclass
class Received:
    """One result as the client saw it: when it arrived and what it covered."""

    arrived: float  # seconds since the first audio was available to send
    final: bool
    start: float  # result_start_offset
    end: float  # result_end_offset
    text: str
    words: list[tuple[float, float, str]] = field(default_factory=list)


def nearest(utts: list[Utterance], t: float) -> int:
    """Index of the utterance that holds time t, or the closest one."""
    best, gap = 0, float("inf")
    for i, u in enumerate(utts):
        d = 0.0 if u.start <= t <= u.end else min(abs(t - u.start), abs(t - u.end))
        if d < gap:
            best, gap = i, d
    return best


def final_latencies(utts: list[Utterance], results: list[Received]) -> list[float]:
    """Per utterance with words: from the end of its audio until its last word was final."""
    last_final: dict[int, float] = {}
    for r in results:
        if not r.final:
            continue
        for start, end, _ in r.words:
            i = nearest(utts, (start + end) / 2)
            last_final[i] = max(last_final.get(i, 0.0), r.arrived)
    return [last_final[i] - utts[i].end for i in sorted(last_final)]


def first_interim_latencies(utts: list[Utterance], results: list[Received]) -> list[float]:
    """Per utterance: from the start of its speech until the first result (interim or final) about it."""
    first: dict[int, float] = {}
    for r in results:
        i = nearest(utts, r.start)
        first.setdefault(i, r.arrived)
    return [first[i] - utts[i].start for i in sorted(first)]


def revisions(results: list[Received]) -> int:
    """Finals that go back over an earlier final: their audio overlaps it, or they start by repeating
    its last two words (what a final re-sent with new text would look like)."""
    count = 0
    previous: Received | None = None
    for r in (r for r in results if r.final):
        if previous is not None:
            overlap = r.start < previous.end - 0.05
            head = [normalise(w) for w in r.text.split()[:2]]
            tail = [normalise(w) for w in previous.text.split()[-2:]]
            if overlap or (len(head) == 2 and head == tail):
                count += 1
        previous = r
    return count


def normalise(text: str) -> str:
    return str(_NORMALISE(text))


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent after Whisper's English normaliser (case, punctuation, numbers, spelling)."""
    refs = [normalise(t) for t in references]
    hyps = [normalise(t) for t in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    return 100.0 * float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
