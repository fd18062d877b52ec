"""One TranscribeWithProgress as the client sees it, across the workers that served it.

A worker lost mid-call (killed, OOM, restarted) has already sent some progress reports. The call is
idempotent, so another worker transcribes the recording again from the start; this keeps what the
client has seen and lets through only what is new: segments that start after the last one already
sent (ids going on from it), progress that never goes down, and the whole result at the end. Nothing
reaches the client twice, and the call does not fail for a worker it never chose.
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from services.gen import transcription_pb2 as pb

#: A retried worker cuts segments where the first one did (same model, same audio); this absorbs rounding.
EDGE_S = 0.05


def _seconds(value: Duration) -> float:
    return value.ToNanoseconds() / 1e9


class ProgressSeen:
    """What the client has been sent so far."""

    def __init__(self) -> None:
        self.reports = 0
        self._segments_end = 0.0
        self._next_id = 0
        self._processed = pb.TranscribeWithProgressResponse().processed_audio
        self._percent = 0.0

    def new_part(self, response: pb.TranscribeWithProgressResponse) -> pb.TranscribeWithProgressResponse | None:
        """`response` as the client should get it, or None when it holds nothing the client has not seen."""
        fresh = [s for s in response.segments if _seconds(s.start_offset) >= self._segments_end - EDGE_S]
        news = fresh or response.HasField("result") or response.progress_percent > self._percent
        if self.reports and not news:
            return None
        out = pb.TranscribeWithProgressResponse()
        out.CopyFrom(response)
        del out.segments[:]
        for segment in fresh:
            copy = out.segments.add()
            copy.CopyFrom(segment)
            copy.id = max(segment.id, self._next_id)  # the same ids as before where segments are cut the same
            self._next_id = copy.id + 1
            self._segments_end = _seconds(segment.end_offset)
        if response.progress_percent < self._percent and not response.HasField("result"):
            out.progress_percent = self._percent
            out.processed_audio.CopyFrom(self._processed)
        self._percent = out.progress_percent
        self._processed.CopyFrom(out.processed_audio)
        self.reports += 1
        return out
