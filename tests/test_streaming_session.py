"""Unit tests of the streaming session's bookkeeping: agreement, commits, buffer trims, voice activity.

The voice-activity detector is the real Silero model on real (synthetic) speech. The Whisper engine
is `ScriptedFakeEngine`, a fake named as such: it "hears" a script of words at known times, so a
test can check that every committed word comes out once, in order, at its exact time, across buffer
trims and utterance ends. The real engine is exercised end to end in test_streaming.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.vad import get_vad_model

from services.common.audio import SAMPLE_RATE
from services.gpu_worker.batching.scheduler import Priority
from services.gpu_worker.engines.base import DecodeOptions, EngineInfo, EngineResult, Segment, Word
from services.gpu_worker.streaming.agreement import (
    after_committed,
    agreed_prefix,
    drop_repeated_tail,
    ends_sentence,
    monotonic,
)
from services.gpu_worker.streaming.audio_buffer import AudioBuffer
from services.gpu_worker.streaming.session import SessionConfig, StreamingSession, StreamUpdate
from services.gpu_worker.streaming.vad import WINDOW, SileroStream, SpeechDetector, VadConfig
from tests.helpers import read_wav

pytestmark = pytest.mark.fast

CLIP_WORDS = 7  # script words per clip, 0.35 s apart from 0.2 s on: all inside the clip's speech


def _clip() -> np.ndarray:
    pcm, _, _ = read_wav("speech_short.wav")  # speech from about 0.05 s to 3.0 s
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32)[: round(3.1 * SAMPLE_RATE)] / 32768.0


def _w(word: str, start: float, end: float) -> Word:
    return Word(start, end, word, 0.9)


class ScriptedFakeEngine:
    """Fake Whisper for unit tests. It finds where the buffer lies in the stream it was built with and
    returns the script's words whose audio lies wholly inside, with the script's times shifted to the
    buffer. A word that ends within `unsure_s` of the buffer's end is misspelt differently on every
    call, as Whisper garbles a word cut off mid-sound, so only a later decode can confirm it."""

    info = EngineInfo("fake", "fake", "cpu", "cpu", "int8", False, ("en",))

    def __init__(self, stream: np.ndarray, script: list[Word], unsure_s: float = 0.15) -> None:
        self.stream = stream
        self.script = script
        self.unsure = unsure_s
        self.calls = 0
        self.longest_s = 0.0

    def _locate(self, audio: np.ndarray) -> int:
        for start in np.flatnonzero(self.stream == audio[0]):
            if np.array_equal(self.stream[start : start + audio.size], audio):
                return int(start)
        raise AssertionError("the buffer is not a slice of the stream")

    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, on_segment: object = None, priority: Priority = Priority.BULK
    ) -> EngineResult:
        self.calls += 1
        self.longest_s = max(self.longest_s, audio.size / SAMPLE_RATE)
        start = self._locate(audio) / SAMPLE_RATE
        end = start + audio.size / SAMPLE_RATE
        words = []
        for w in self.script:
            if w.start >= start and w.end <= end:
                spelling = w.word if end - w.end > self.unsure else f"{w.word}x{self.calls}"
                words.append(Word(w.start - start, w.end - start, spelling, w.probability))
        segment = Segment(0, 0.0, end - start, " ".join(w.word for w in words), tuple(words))
        return EngineResult((segment,), "en", 1.0, end - start)


def build_stream(gaps: list[float], lead_s: float = 1.0) -> tuple[np.ndarray, list[Word]]:
    """The clip once before each gap, after `lead_s` of silence; a light dither makes every sample unique."""
    clip = _clip()
    parts = [np.zeros(round(lead_s * SAMPLE_RATE), dtype=np.float32)]
    script: list[Word] = []
    at = lead_s
    for gap in gaps:
        script += [_w(f"w{len(script) + k}", at + 0.2 + 0.35 * k, at + 0.5 + 0.35 * k) for k in range(CLIP_WORDS)]
        parts += [clip, np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)]
        at += (clip.size + round(gap * SAMPLE_RATE)) / SAMPLE_RATE
    stream = np.concatenate(parts)
    stream += np.random.default_rng(7).normal(0, 1e-4, stream.size).astype(np.float32)
    return stream, script


def drive(session: StreamingSession, stream: np.ndarray, chunk_s: float = 0.1) -> list[StreamUpdate | str]:
    """Feed the stream as the worker does at real-time pace; the updates and voice events in order."""
    out: list[StreamUpdate | str] = []
    step = round(chunk_s * SAMPLE_RATE)
    for i in range(0, stream.size, step):
        session.add_audio(stream[i : i + step])
        while True:
            out += [e.kind for e in session.detect()]
            if not session.closing:
                break
            out.append(session.process())
        if session.decode_due():
            out.append(session.process())
        assert session.buffer_seconds <= session.config.max_buffer_s + chunk_s + 0.05
    out.append(session.finish())
    return out


def finals(updates: list[StreamUpdate | str]) -> list[Word]:
    return [w for u in updates if isinstance(u, StreamUpdate) for w in u.final_words]


def test_every_word_is_final_once_in_order_at_its_time_across_trims_and_utterances() -> None:
    # Eight clips with short pauses make one utterance of about 25 s (buffer trims inside it),
    # then a long pause ends it, then two more utterances.
    stream, script = build_stream([0.1] * 7 + [1.5, 1.5, 1.0])
    engine = ScriptedFakeEngine(stream, script)
    session = StreamingSession(engine, DecodeOptions(), SessionConfig(vad=VadConfig(speech_end_s=0.8)))
    updates = drive(session, stream)
    got = finals(updates)
    assert [w.word for w in got] == [w.word for w in script]
    for heard, said in zip(got, script, strict=True):
        assert heard.start == pytest.approx(said.start, abs=1e-3)
        assert heard.end == pytest.approx(said.end, abs=1e-3)
    # The 25 s utterance was decoded in pieces: the buffer was cut inside it.
    assert engine.longest_s <= session.config.trim_after_s + 2
    assert updates.count("begin") == updates.count("end") == 3
    assert session.utterances == 3


def test_interim_words_come_before_they_are_final_and_stability_is_below_one() -> None:
    stream, script = build_stream([1.0, 1.0])
    session = StreamingSession(ScriptedFakeEngine(stream, script), DecodeOptions())
    updates = [u for u in drive(session, stream) if isinstance(u, StreamUpdate)]
    first_interim: dict[str, int] = {}
    first_final: dict[str, int] = {}
    for i, update in enumerate(updates):
        for w in update.interim_words:
            first_interim.setdefault(w.word, i)
        for w in update.final_words:
            assert w.word not in first_final, f"{w.word} was final twice"
            first_final[w.word] = i
        assert not update.interim_words or 0 < update.stability < 1
    assert set(first_final) == {w.word for w in script}
    interim_first = [word for word in first_final if word in first_interim]
    assert len(interim_first) >= len(script) // 2
    assert all(first_interim[word] < first_final[word] for word in interim_first)


def test_utterance_end_commits_without_waiting_for_a_later_hypothesis() -> None:
    # The last words of an utterance are final once the pause reaches the end-of-speech timeout:
    # the decode made early in the pause is reused, with no decode at the end.
    stream, script = build_stream([2.0])
    engine = ScriptedFakeEngine(stream, script)
    session = StreamingSession(engine, DecodeOptions())
    step = round(0.1 * SAMPLE_RATE)
    end_at = None
    for i in range(0, stream.size, step):
        session.add_audio(stream[i : i + step])
        events = session.detect()
        if "end" in [e.kind for e in events]:
            calls = engine.calls
            session.process()
            assert engine.calls == calls, "the pause decode should have been reused"
            assert [w.word for w in session.committed_words] == [w.word for w in script]
            end_at = (i + step) / SAMPLE_RATE
            break
        if session.decode_due():
            session.process()
    assert end_at is not None
    speech_end = 1.0 + 3.0  # lead silence + the clip's speech
    assert end_at - speech_end < session.config.vad.speech_end_s + 0.3


def test_silence_costs_no_decode_and_keeps_the_buffer_short() -> None:
    rng = np.random.default_rng(3)
    silence = rng.normal(0, 3e-3, 60 * SAMPLE_RATE).astype(np.float32)  # a minute of room noise
    engine = ScriptedFakeEngine(silence, [])
    session = StreamingSession(engine, DecodeOptions())
    updates = drive(session, silence, chunk_s=0.5)
    assert engine.calls == 0
    assert updates == [StreamUpdate((), (), 1.0)]
    assert session.buffer_seconds <= session.config.vad.pre_roll_s + 0.6


def test_without_agreement_the_buffer_is_still_bounded() -> None:
    # Every word misspelt on every call: agreement never commits, so the session must force commits
    # rather than let the buffer outgrow Whisper's 30 s window.
    stream, script = build_stream([0.1] * 12 + [1.0])
    engine = ScriptedFakeEngine(stream, script, unsure_s=1e9)
    session = StreamingSession(engine, DecodeOptions(), SessionConfig(vad=VadConfig(speech_end_s=0.8)))
    got = finals(drive(session, stream))
    assert engine.longest_s <= session.config.max_buffer_s + 1.1
    starts = [w.start for w in got]
    assert starts == sorted(starts) and len(got) >= len(script) - 2


def test_single_utterance_stops_judging_audio_after_the_first_end() -> None:
    stream, script = build_stream([1.0, 1.0])
    session = StreamingSession(ScriptedFakeEngine(stream, script), DecodeOptions())
    session.add_audio(stream)  # all at once: detection must still stop at the first utterance's end
    assert [e.kind for e in session.detect()] == ["begin", "end"]
    assert session.closing and session.detect() == []
    update = session.process()
    assert [w.word for w in update.final_words] == [w.word for w in script[:CLIP_WORDS]]
    assert [e.kind for e in session.detect()] == ["begin", "end"]


def test_silero_fed_in_pieces_matches_one_call_over_everything() -> None:
    stream, _ = build_stream([0.7, 0.3])
    whole = stream[: stream.size - stream.size % WINDOW]
    expected = np.asarray(get_vad_model()(whole)).reshape(-1)
    vad = SileroStream()
    sizes = [320, 7, 16000, 512, 1024 * 3 + 5]  # 20 ms, odd sizes, one second
    got, at, i = [], 0, 0
    while at < whole.size:
        piece = whole[at : at + sizes[i % len(sizes)]]
        got.append(vad.feed(piece))
        at += piece.size
        i += 1
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


def test_speech_detector_ends_an_utterance_after_the_timeout_only() -> None:
    detector = SpeechDetector(VadConfig(threshold=0.5, speech_end_s=0.2))
    probabilities = [0.1, 0.9, 0.9, 0.2, 0.2, 0.45, 0.9, 0.1] + [0.1] * 8
    events = [(i, e) for i, p in enumerate(probabilities) if (e := detector.window(p, i * WINDOW))]
    # Speech at window 1; the dip at 3-4 is shorter than 0.2 s (6.25 windows) and 0.45 sits in the
    # hysteresis band, so the utterance ends only once the silence from window 7 has lasted 0.2 s.
    assert [(i, e.kind, e.sample) for i, e in events] == [(1, "begin", WINDOW), (13, "end", 7 * WINDOW)]


def test_agreement_helpers() -> None:
    a = [_w("Hello", 0, 0.4), _w("world.", 0.5, 0.9), _w("How", 1.0, 1.2)]
    b = [_w("hello", 0, 0.4), _w("World", 0.5, 0.9), _w("are", 1.0, 1.2)]
    assert agreed_prefix(a, b) == 2
    assert agreed_prefix([], b) == 0
    # Aligned by spelling although the times drifted by most of a word.
    committed = [_w("the", 1.0, 1.2), _w("quick", 1.2, 1.6), _w("brown", 1.6, 2.0)]
    hypothesis = [_w("the", 1.3, 1.5), _w("quick", 1.5, 1.9), _w("brown", 1.9, 2.3), _w("fox", 2.3, 2.6)]
    assert [w.word for w in after_committed(committed, hypothesis, 2.0)] == ["fox"]
    assert [w.word for w in drop_repeated_tail(committed, hypothesis[2:])] == ["fox"]
    assert ends_sentence(_w('dog."', 0, 1)) and not ends_sentence(_w("dog,", 0, 1))
    clamped = monotonic([_w("a", 0.5, 0.7), _w("b", 0.6, 0.65)], floor=0.6)
    assert [(w.start, w.end) for w in clamped] == [(0.6, 0.7), (0.7, 0.7)]


def test_audio_buffer_keeps_positions_and_reuses_its_array() -> None:
    buffer = AudioBuffer(capacity=1000)
    stream = np.arange(100_000, dtype=np.float32)
    array = buffer._data
    at = 0
    for step in range(200):  # append 300, keep at most ~600: a stream that drops as it goes
        buffer.append(stream[at : at + 300])
        at += 300
        buffer.drop_before(at - 600 + (step % 7) * 10)
        np.testing.assert_array_equal(buffer.view(), stream[buffer.start : at])
        np.testing.assert_array_equal(buffer.view(at - 50, at - 10), stream[at - 50 : at - 10])
    assert buffer._data is array  # steady state: no new array
    buffer.append(stream[at : at + 5000])  # more than the capacity: it grows and keeps the content
    np.testing.assert_array_equal(buffer.view(), stream[buffer.start : at + 5000])
    assert buffer.view(0, buffer.start).size == 0 and buffer.drop_before(buffer.start - 5) == 0
