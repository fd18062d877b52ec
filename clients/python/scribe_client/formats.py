"""Transcripts as text, SubRip (SRT), WebVTT, JSON with words, and TSV: pure functions of a response.

Times come from the segments' offsets, rounded to the millisecond. The JSON has times in seconds:
{"text", "language", "language_probability", "duration", "worker_id", "request_id",
 "segments": [{"id", "start", "end", "text", "avg_logprob", "no_speech_probability",
               "words": [{"word", "start", "end", "probability"}]}]}
(words are filled when the call asked for word time offsets; the CLI does for --format json).

With speaker labels (diarization_config), each segment and word has "speaker" and the JSON lists
"speakers": [{"speaker", "speaking_time"}]; text, SRT and TSV put "Speaker 1: " before each segment's text
(a known speaker's name instead: "Alice: "), and WebVTT gives each cue a voice tag, <v Speaker 1>.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from google.protobuf import duration_pb2

from scribe_client.gen import transcription_pb2 as pb

FORMATS = ("txt", "srt", "vtt", "json", "tsv")


def milliseconds(d: duration_pb2.Duration) -> int:
    return round(d.ToNanoseconds() / 1e6)


def timestamp(ms: int, separator: str) -> str:
    """HH:MM:SS<separator>mmm: "," for SRT, "." for WebVTT."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, so a segment's text is kept on one line.
    return " ".join(text.split())


def _spoken(response: pb.TranscribeResponse) -> list[pb.Segment]:
    return [s for s in response.segments if s.text.strip()]


def speaker_name(label: str) -> str:
    """How a speaker label reads: "Speaker 1" for a number, a known speaker's name as it is."""
    return f"Speaker {label}" if label.isdigit() else label


def _said(segment: pb.Segment) -> str:
    """A segment's text on one line, after its speaker when it has one."""
    text = _cue_text(segment.text)
    return f"{speaker_name(segment.speaker_label)}: {text}" if segment.speaker_label else text


def to_txt(response: pb.TranscribeResponse) -> str:
    return "\n".join(_said(s) for s in _spoken(response)) + "\n"


def to_srt(response: pb.TranscribeResponse) -> str:
    cues = [
        f"{i}\n{timestamp(milliseconds(s.start_offset), ',')} --> {timestamp(milliseconds(s.end_offset), ',')}\n"
        f"{_said(s)}\n"
        for i, s in enumerate(_spoken(response), start=1)
    ]
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: &, < and > must be escaped, and "-->" may not appear.
    return _cue_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _voice(segment: pb.Segment) -> str:
    # A voice span's annotation ends at ">" and may not hold a line break: escaped like cue text.
    return f"<v {_vtt_escape(speaker_name(segment.speaker_label))}>" if segment.speaker_label else ""


def to_vtt(response: pb.TranscribeResponse) -> str:
    cues = [
        f"{timestamp(milliseconds(s.start_offset), '.')} --> {timestamp(milliseconds(s.end_offset), '.')}\n"
        f"{_voice(s)}{_vtt_escape(s.text)}\n"
        for s in _spoken(response)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _seconds(d: duration_pb2.Duration) -> float:
    return milliseconds(d) / 1000


def _with_speaker(item: dict[str, object], label: str) -> dict[str, object]:
    if label:
        item["speaker"] = label
    return item


def to_dict(response: pb.TranscribeResponse) -> dict[str, object]:
    out: dict[str, object] = {
        "text": response.transcript,
        "language": response.language_code,
        "language_probability": round(response.language_probability, 4),
        "duration": _seconds(response.audio_duration),
        "worker_id": response.worker_id,
        "request_id": response.request_id,
        "segments": [
            _with_speaker(
                {
                    "id": s.id,
                    "start": _seconds(s.start_offset),
                    "end": _seconds(s.end_offset),
                    "text": s.text,
                    "avg_logprob": round(s.avg_logprob, 4),
                    "no_speech_probability": round(s.no_speech_probability, 4),
                    "words": [
                        _with_speaker(
                            {
                                "word": w.word,
                                "start": _seconds(w.start_offset),
                                "end": _seconds(w.end_offset),
                                "probability": round(w.probability, 4),
                            },
                            w.speaker_label,
                        )
                        for w in s.words
                    ],
                },
                s.speaker_label,
            )
            for s in response.segments
        ],
    }
    if response.speakers:
        out["speakers"] = [
            {"speaker": p.speaker_label, "speaking_time": _seconds(p.speaking_time)} for p in response.speakers
        ]
    return out


def to_json(response: pb.TranscribeResponse) -> str:
    return json.dumps(to_dict(response), ensure_ascii=False, indent=2) + "\n"


def to_tsv(response: pb.TranscribeResponse) -> str:
    """Start and end in integer milliseconds, then the text (the layout of Whisper's own TSV)."""
    rows = ["start\tend\ttext"]
    rows += [
        f"{milliseconds(s.start_offset)}\t{milliseconds(s.end_offset)}\t{_said(s).replace(chr(9), ' ')}"
        for s in _spoken(response)
    ]
    return "\n".join(rows) + "\n"


WRITERS: dict[str, Callable[[pb.TranscribeResponse], str]] = {
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "json": to_json,
    "tsv": to_tsv,
}


def render(response: pb.TranscribeResponse, fmt: str) -> str:
    try:
        return WRITERS[fmt](response)
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}") from None
