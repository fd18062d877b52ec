"""gRPC stream results as a Realtime transcription session's server events (pure, no I/O).

Each utterance is a conversation item. With server VAD the worker's voice activity cuts them:
SPEECH_ACTIVITY_BEGIN is `input_audio_buffer.speech_started`, SPEECH_ACTIVITY_END is `speech_stopped`
then `committed`, and UTTERANCE_FINALIZED (every final result of the utterance sent) is `completed`.
Without turn detection the client's commit cuts items and the worker's utterances inside one are joined.

Deltas are text that only grows (a delta cannot take back what an earlier one said). Final words are
sent at once; of an interim only the words on which it agrees with the interim before it, short of
its last word (Whisper still changes the last word, and ends every interim with a full stop), and only
while they extend what was sent. Should a later decode still revise a word already sent, deltas pause
until the text grows past it again, and `completed`, which always carries the item's final text, is
authoritative. Without turn detection an item's text is sent after its commit, from finals only (the
stream is then ending, and its finals come quickly), so its deltas always add up to the transcript.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.gen import transcription_pb2 as pb

BEGIN = pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_BEGIN
END = pb.SPEECH_EVENT_TYPE_SPEECH_ACTIVITY_END
FINALIZED = pb.SPEECH_EVENT_TYPE_UTTERANCE_FINALIZED
Event = dict[str, Any]


def _ms(d: Any) -> int:
    return round(d.ToNanoseconds() / 1e6)


class Ids:
    """Event and item ids of one session: items numbered in order, so their ids sort as they were spoken."""

    def __init__(self, session: str) -> None:
        self._tag = session.removeprefix("sess_")[:12]
        self._events = 0
        self._items = 0

    def event(self) -> str:
        self._events += 1
        return f"event_{self._tag}{self._events:07d}"

    def item(self) -> str:
        self._items += 1
        return f"item_{self._tag}{self._items:06d}"


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    probability: float | None
    speaker: str = ""


def words_of(result: pb.StreamingRecognitionResult, base_ms: int) -> list[Word]:
    if not result.alternatives:
        return []
    alt = result.alternatives[0]
    # speaker_label comes with speaker diarization (another issue's field): read it where it exists.
    speaker = str(getattr(result, "speaker_label", "") or "")
    if alt.words:
        return [
            Word(
                w.word.strip(),
                base_ms + _ms(w.start_offset),
                base_ms + _ms(w.end_offset),
                w.probability,
                str(getattr(w, "speaker_label", "") or speaker),
            )
            for w in alt.words
            if w.word.strip()
        ]
    start, end = base_ms + _ms(result.result_start_offset), base_ms + _ms(result.result_end_offset)
    return [Word(t, start, end, None, speaker) for t in alt.transcript.split()]


def text_of(words: list[Word]) -> str:
    return " ".join(w.text for w in words)


@dataclass
class Item:
    id: str
    start_ms: int
    end_ms: int | None = None
    finals: list[Word] = field(default_factory=list)
    interim: list[Word] = field(default_factory=list)
    stable: list[Word] = field(default_factory=list)  # interim words two decodes in a row agreed on
    sent: str = ""  # the deltas so far, concatenated
    committed: bool = False  # input_audio_buffer.committed was sent
    dropped: bool = False  # cleared: nothing more is sent about it


class Translator:
    """The events of a session's gRPC streams, fed one stream after another in order."""

    def __init__(self, ids: Ids) -> None:
        self.ids = ids
        self.logprobs = False
        self.item: Item | None = None
        self.previous: str | None = None  # the last committed item
        self.last_end_ms = 0
        self._base_ms = 0
        self._vad = True
        self._padding_ms = 0
        self._cleared = False
        self._commit_acked = True

    # --- a stream's life ------------------------------------------------------------------------------

    def start_stream(self, base_ms: int, vad: bool, padding_ms: int) -> None:
        """A new gRPC stream whose audio starts at session time `base_ms`."""
        self._base_ms, self._vad, self._padding_ms = base_ms, vad, padding_ms
        self._cleared = False
        self._commit_acked = True
        self.item = None

    def feed(self, response: pb.StreamingTranscribeResponse) -> list[Event]:
        out: list[Event] = []
        kind = response.speech_event_type
        if kind == BEGIN and self._vad:
            out += self._begin(self._base_ms + _ms(response.speech_event_offset))
        for result in response.results:
            out += self._result(result)
        if kind == END and self._vad:
            out += self._stop(self._base_ms + _ms(response.speech_event_offset))
        elif kind == FINALIZED and self._vad:
            out += self._stop(self._base_ms + _ms(response.speech_event_offset))  # a no-op once stopped
            out += self._complete()
        return out

    def commit(self, audio_end_ms: int) -> list[Event]:
        """The client committed the buffer; the session half-closes the stream after this."""
        if self._vad:
            # The open utterance (if any) ends with the stream; with none, `end` acknowledges the commit.
            item = self.item
            self._commit_acked = item is not None and not item.dropped and not item.committed
            return []
        item = self._ensure_item(self._base_ms)
        item.committed = True
        item.end_ms = audio_end_ms
        out = [self._committed(item)]
        return out + self._grow(item)

    def clear(self) -> None:
        """The client cleared the buffer: the open item's results, and any later item's, are dropped."""
        self._cleared = True
        if self.item is not None and not self.item.committed:
            self.item.dropped = True

    def end(self) -> list[Event]:
        """The stream ended (its audio all final): complete what is open."""
        out: list[Event] = []
        item = self.item
        if item is not None and not item.dropped:
            if self._vad and not item.committed:
                out += self._stop(item.finals[-1].end_ms if item.finals else item.start_ms)
            if item.committed:
                out += self._complete()
        if not self._commit_acked:
            item = Item(self.ids.item(), self.last_end_ms, self.last_end_ms, committed=True)
            out += [self._committed(item), self._completed(item)]
            self._commit_acked = True
        self.item = None
        return out

    # --- events ---------------------------------------------------------------------------------------

    def _ensure_item(self, start_ms: int) -> Item:
        if self.item is None:
            self.item = Item(self.ids.item(), start_ms, dropped=self._cleared)
        return self.item

    def _begin(self, at_ms: int) -> list[Event]:
        out: list[Event] = []
        if self.item is not None and not self.item.dropped:
            if not self.item.committed:
                return []  # already open (results came first): one item per utterance
            out += self._complete()  # the previous utterance's end had no FINALIZED mark: it is complete now
        start = max(self.last_end_ms, at_ms - self._padding_ms)
        self.item = Item(self.ids.item(), start, dropped=self._cleared)
        self._commit_acked = True
        if self.item.dropped:
            return out
        return [*out, self._event("input_audio_buffer.speech_started", audio_start_ms=start, item_id=self.item.id)]

    def _stop(self, at_ms: int) -> list[Event]:
        item = self.item
        if item is None or item.dropped or item.committed:
            return []
        item.end_ms = max(at_ms, item.start_ms)
        item.committed = True
        self.last_end_ms = item.end_ms
        stopped = self._event("input_audio_buffer.speech_stopped", audio_end_ms=item.end_ms, item_id=item.id)
        return [stopped, self._committed(item)]

    def _committed(self, item: Item) -> Event:
        event = self._event("input_audio_buffer.committed", previous_item_id=self.previous, item_id=item.id)
        self.previous = item.id
        return event

    def _result(self, result: pb.StreamingRecognitionResult) -> list[Event]:
        words = words_of(result, self._base_ms)
        if self._vad and self.item is None and not words:
            return []
        item = self.item
        if item is None:
            start = words[0].start_ms if words else self._base_ms
            if self._vad:
                out = self._begin(start + self._padding_ms)
                item = self.item
                assert item is not None
                return out + self._result_into(item, result, words)
            item = self._ensure_item(start)
        return self._result_into(item, result, words)

    def _result_into(self, item: Item, result: pb.StreamingRecognitionResult, words: list[Word]) -> list[Event]:
        if result.is_final:
            item.finals += words
            item.interim, item.stable = [], []
        else:
            agreed = 0
            for before, now in zip(item.interim, words, strict=False):
                if before.text != now.text:
                    break
                agreed += 1
            item.interim = words
            item.stable = words[: min(agreed, len(words) - 1)]
        if item.dropped or (not self._vad and not item.committed):
            return []  # without VAD an item's text is sent once the client commits it
        return self._grow(item)

    def _grow(self, item: Item, final: bool = False) -> list[Event]:
        words = item.finals if final or not self._vad else item.finals + item.stable
        text = text_of(words)
        if len(text) <= len(item.sent) or not text.startswith(item.sent):
            return []
        delta = text[len(item.sent) :]
        event = self._event(
            "conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0, delta=delta
        )
        if self.logprobs:
            event["logprobs"] = _logprobs(_new_words(words, len(item.sent)))
        item.sent = text
        return [event]

    def _complete(self) -> list[Event]:
        item = self.item
        self.item = None
        if item is None or item.dropped:
            return []
        return [*self._grow(item, final=True), *self._segments(item), self._completed(item)]

    def _completed(self, item: Item) -> Event:
        end = item.end_ms if item.end_ms is not None else item.start_ms
        event = self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=text_of(item.finals),
            usage={"type": "duration", "seconds": round(max(0, end - item.start_ms) / 1000, 3)},
        )
        if self.logprobs:
            event["logprobs"] = _logprobs(item.finals)
        return event

    def _segments(self, item: Item) -> list[Event]:
        """With speaker labels: one `segment` event per run of one speaker's words (OpenAI's diarized shape)."""
        if not any(w.speaker for w in item.finals):
            return []
        runs: list[list[Word]] = []
        for word in item.finals:
            if runs and runs[-1][0].speaker == word.speaker:
                runs[-1].append(word)
            else:
                runs.append([word])
        return [
            self._event(
                "conversation.item.input_audio_transcription.segment",
                item_id=item.id,
                content_index=0,
                id=f"seg_{item.id.removeprefix('item_')}_{i}",
                start=run[0].start_ms / 1000,
                end=run[-1].end_ms / 1000,
                text=text_of(run),
                speaker=run[0].speaker,
            )
            for i, run in enumerate(runs)
        ]

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "event_id": self.ids.event(), **fields}


def _new_words(words: list[Word], sent_chars: int) -> list[Word]:
    """The words that end past the first `sent_chars` characters of their joined text."""
    out, end = [], -1
    for word in words:
        end += 1 + len(word.text)
        if end > sent_chars:
            out.append(word)
    return out


def _logprobs(words: list[Word]) -> list[dict[str, object]]:
    """One entry per word (Whisper's word probability; scribe has no per-token figures through gRPC)."""
    return [
        {
            "token": w.text,
            "bytes": list(w.text.encode()),
            "logprob": round(math.log(max(w.probability, 1e-9)), 4) if w.probability is not None else 0.0,
        }
        for w in words
    ]
