"""A TranscribeResponse in the shapes of OpenAI's audio API (pure functions).

text, srt and vtt are the CLI's writers (scribe_client.formats); json is {"text", "usage"}; verbose_json
is OpenAI's {"task", "language", "duration", "text", "segments", "words", "usage"}. Segments carry id,
start, end, text, avg_logprob and no_speech_prob; OpenAI's seek, tokens, temperature and
compression_ratio are left out because the gateway does not report them. diarized_json is in
services.http_api.diarized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scribe_client.formats import milliseconds, to_srt, to_txt, to_vtt

from services.gen import transcription_pb2 as pb

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("segment", "word")
TEXT_WRITERS = {"text": to_txt, "srt": to_srt, "vtt": to_vtt}
MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


def _seconds(d: object) -> float:
    return milliseconds(d) / 1000  # type: ignore[arg-type]


def usage(response: pb.TranscribeResponse) -> dict[str, object]:
    return {"type": "duration", "seconds": math.ceil(_seconds(response.audio_duration))}


def json_body(response: pb.TranscribeResponse) -> dict[str, object]:
    return {"text": response.transcript, "usage": usage(response)}


def verbose_json_body(response: pb.TranscribeResponse, task: str, granularities: Sequence[str]) -> dict[str, object]:
    body: dict[str, object] = {
        "task": task,
        "language": response.language_code,
        "duration": _seconds(response.audio_duration),
        "text": response.transcript,
    }
    # OpenAI's default granularity is segment; asking for words alone leaves segments out.
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": s.id,
                "start": _seconds(s.start_offset),
                "end": _seconds(s.end_offset),
                "text": s.text,
                "avg_logprob": round(s.avg_logprob, 4),
                "no_speech_prob": round(s.no_speech_probability, 4),
            }
            for s in response.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": _seconds(w.start_offset), "end": _seconds(w.end_offset)}
            for s in response.segments
            for w in s.words
        ]
    body["usage"] = usage(response)
    return body
