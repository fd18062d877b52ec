"""Speaker labels on a transcript (pure): a timeline of who spoke when, each word labelled by the turn it
falls in, segments split where the speaker changes, and the speakers with their speaking time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from services.gen import transcription_pb2 as pb


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: int


def timeline(starts: Sequence[float], ends: Sequence[float], speakers: Sequence[int]) -> list[Turn]:
    """Windows with speakers to turns that do not overlap: runs of one speaker joined (across gaps too),
    and where two speakers' windows overlap, the boundary in the middle of the overlap."""
    turns: list[Turn] = []
    for start, end, speaker in sorted(zip(starts, ends, speakers, strict=True)):
        if turns and turns[-1].speaker == speaker and start <= turns[-1].end + 0.05:
            turns[-1] = Turn(turns[-1].start, max(turns[-1].end, end), speaker)
            continue
        if turns and start < turns[-1].end:
            middle = (start + turns[-1].end) / 2
            turns[-1] = Turn(turns[-1].start, middle, turns[-1].speaker)
            start = middle
        turns.append(Turn(start, end, speaker))
    return [t for t in turns if t.end > t.start]


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> int | None:
    """The speaker who speaks most of [start, end]; the nearest turn's when none overlaps."""
    if not turns:
        return None
    best, best_overlap = None, 0.0
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > best_overlap:
            best, best_overlap = turn.speaker, overlap
    if best is not None:
        return best
    middle = (start + end) / 2
    nearest = min(
        turns, key=lambda t: 0.0 if t.start <= middle <= t.end else min(abs(t.start - middle), abs(t.end - middle))
    )
    return nearest.speaker


def _seconds(d: Duration) -> float:
    return d.ToNanoseconds() / 1e9


def _piece(segment: pb.Segment, words: list[pb.WordInfo], first: bool, last: bool) -> pb.Segment:
    part = pb.Segment()
    part.CopyFrom(segment)
    del part.words[:]
    part.words.extend(words)
    part.text = " ".join(w.word for w in words)
    if not first:
        part.start_offset.CopyFrom(words[0].start_offset)
    if not last:
        part.end_offset.CopyFrom(words[-1].end_offset)
    return part


def label_segments(segments: Sequence[pb.Segment], turns: Sequence[Turn], names: Sequence[str]) -> list[pb.Segment]:
    """The segments with speaker labels (names[speaker]) on every word and segment, split where the
    speaker changes between words; ids renumbered."""
    out: list[pb.Segment] = []
    for segment in segments:
        words = list(segment.words)
        for word in words:
            speaker = speaker_at(turns, _seconds(word.start_offset), _seconds(word.end_offset))
            word.speaker_label = names[speaker] if speaker is not None else ""
        if not words:
            labelled = pb.Segment()
            labelled.CopyFrom(segment)
            speaker = speaker_at(turns, _seconds(segment.start_offset), _seconds(segment.end_offset))
            labelled.speaker_label = names[speaker] if speaker is not None else ""
            out.append(labelled)
            continue
        runs: list[list[pb.WordInfo]] = [[words[0]]]
        for word in words[1:]:
            if word.speaker_label == runs[-1][-1].speaker_label:
                runs[-1].append(word)
            else:
                runs.append([word])
        if len(runs) == 1:
            labelled = pb.Segment()
            labelled.CopyFrom(segment)
            del labelled.words[:]
            labelled.words.extend(words)
            labelled.speaker_label = words[0].speaker_label
            out.append(labelled)
            continue
        for i, run in enumerate(runs):
            part = _piece(segment, run, i == 0, i == len(runs) - 1)
            part.speaker_label = run[0].speaker_label
            out.append(part)
    for i, segment in enumerate(out):
        segment.id = i
    return out


def speaking_times(turns: Sequence[Turn]) -> dict[int, float]:
    totals: dict[int, float] = {}
    for turn in turns:
        totals[turn.speaker] = totals.get(turn.speaker, 0.0) + (turn.end - turn.start)
    return totals
