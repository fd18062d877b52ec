"""Pure word-list helpers of the streaming session: agreement between hypotheses, alignment to committed words.

Words are compared by spelling (case and punctuation ignored), never by time: Whisper's word times
drift between decodes of the same audio, its spelling of a settled word does not.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from services.gpu_worker.engines.base import Word

_NORMALISE = re.compile(r"[^\w']+")
_SENTENCE_END = (".", "?", "!")


def normalise(word: str) -> str:
    return _NORMALISE.sub("", word.lower())


def ends_sentence(word: Word) -> bool:
    return word.word.rstrip("\"')]").endswith(_SENTENCE_END)


def agreed_prefix(previous: list[Word], current: list[Word]) -> int:
    """Length of the longest prefix on which two hypotheses spell the same words (LocalAgreement-2)."""
    n = 0
    for a, b in zip(previous, current, strict=False):
        if normalise(a.word) != normalise(b.word):
            break
        n += 1
    return n


def drop_repeated_tail(committed: list[Word], hypothesis: list[Word], max_ngram: int = 5) -> list[Word]:
    """Drop words at the start of `hypothesis` that repeat the last committed words (decoded twice)."""
    if not committed or not hypothesis:
        return hypothesis
    for n in range(min(max_ngram, len(committed), len(hypothesis)), 0, -1):
        tail = [normalise(w.word) for w in committed[-n:]]
        head = [normalise(w.word) for w in hypothesis[:n]]
        if tail == head and hypothesis[0].start < committed[-1].end + 1.0:
            return hypothesis[n:]
    return hypothesis


def after_committed(committed: list[Word], hypothesis: list[Word], committed_end: float) -> list[Word]:
    """The words of `hypothesis` that come after what is already committed.

    The buffer can still hold committed audio, so a hypothesis repeats committed words before the new
    ones. Whisper's word times drift (a word's end is often stretched over the next one), so the
    repeat is found by spelling: the hypothesis is aligned to the committed words and cut after the
    last committed word. Only when the spelling does not align are times used.
    """
    if not committed:
        return hypothesis
    a = [normalise(w.word) for w in committed]
    b = [normalise(w.word) for w in hypothesis]
    blocks = [m for m in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks() if m.size]
    if blocks and blocks[-1].a + blocks[-1].size == len(a) and (blocks[-1].size >= 2 or len(a) == 1):
        return hypothesis[blocks[-1].b + blocks[-1].size :]
    return [w for w in hypothesis if (w.start + w.end) / 2 > committed_end - 0.05]


def monotonic(words: list[Word], floor: float) -> list[Word]:
    """Clamp word times so they never go back before `floor` or before the previous word."""
    out = []
    for w in words:
        start = max(w.start, floor)
        end = max(w.end, start)
        out.append(Word(start, end, w.word, w.probability))
        floor = end
    return out
