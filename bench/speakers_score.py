"""Scoring speaker labels: DER with pyannote.metrics (collar 0.25 s, overlapping speech scored) and
speaker-attributed WER (cpWER: each speaker's words against the reference speaker they best match, the
best one-to-one matching over all speakers; a speaker found in excess or missed counts all its words)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

_normalise = EnglishTextNormalizer()

Turns = Iterable[tuple[float, float, str]]


def der(reference: Turns, hypothesis: Turns) -> tuple[float, dict[str, float]]:
    """DER in percent, and its parts (missed, false alarm, confusion) in percent of the reference speech."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: Turns) -> Annotation:
        out = Annotation()
        for i, (start, end, speaker) in enumerate(turns):
            if end > start:
                out[Segment(start, end), i] = speaker
        return out

    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    parts = metric(annotation(reference), annotation(hypothesis), detailed=True)
    total = parts["total"] or 1.0
    return 100.0 * parts["diarization error rate"], {
        "missed": 100.0 * parts["missed detection"] / total,
        "false_alarm": 100.0 * parts["false alarm"] / total,
        "confusion": 100.0 * parts["confusion"] / total,
    }


def _words(text: str) -> str:
    return _normalise(text)


def _errors(reference: str, hypothesis: str) -> int:
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref.split():
        return len(hyp.split())
    if not hyp.split():
        return len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return int(out.substitutions + out.deletions + out.insertions)


def cpwer(reference: dict[str, str], hypothesis: dict[str, str]) -> float:
    """Percent: the fewest word errors over all one-to-one matchings of speakers, over the reference words."""
    refs = list(reference)
    hyps = list(hypothesis)
    size = max(len(refs), len(hyps))
    refs += [""] * (size - len(refs))
    hyps += [""] * (size - len(hyps))
    total = sum(len(_words(t).split()) for t in reference.values()) or 1
    best = min(
        sum(_errors(reference.get(r, ""), hypothesis.get(h, "")) for r, h in zip(refs, order, strict=True))
        for order in itertools.permutations(hyps)
    )
    return 100.0 * best / total


def wer(reference: str, hypothesis: str) -> float:
    ref = _words(reference)
    return 100.0 * _errors(reference, hypothesis) / max(1, len(ref.split()))
