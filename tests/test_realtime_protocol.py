"""The realtime session's pure parts: client events parsed with OpenAI's error shapes, session settings,
gRPC results to server events (deltas that only grow, items in order, commits and clears), and who may
connect. No fleet: the live session is tests/test_realtime.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from google.protobuf.duration_pb2 import Duration

from services.gen import transcription_pb2 as pb
from services.http_api.realtime import config as cfg
from services.http_api.realtime.access import SessionCounter, origin_allowed, token_and_protocol
from services.http_api.realtime.items import BEGIN, END, FINALIZED, Ids, Translator
from services.http_api.realtime.protocol import Append, Problem, SessionUpdate, audio_bytes, parse
from services.http_api.realtime.session import G711

pytestmark = pytest.mark.fast


def _d(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def result(text: str, final: bool, start: float = 0.0) -> pb.StreamingTranscribeResponse:
    words = [
        pb.WordInfo(
            word=" " + w, start_offset=_d(start + i * 0.3), end_offset=_d(start + i * 0.3 + 0.25), probability=0.5
        )
        for i, w in enumerate(text.split())
    ]
    alt = pb.SpeechRecognitionAlternative(transcript=text, words=words)
    return pb.StreamingTranscribeResponse(results=[pb.StreamingRecognitionResult(alternatives=[alt], is_final=final)])


def event(kind: pb.SpeechEventType, at: float) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(speech_event_type=kind, speech_event_offset=_d(at))


def finalized(response: pb.StreamingTranscribeResponse) -> pb.StreamingTranscribeResponse:
    response.speech_event_type = FINALIZED
    return response


def kinds(events: list[dict[str, object]]) -> list[str]:
    return [str(e["type"]).rsplit(".", 1)[-1] for e in events]


# --- Client events --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "param"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_event", None),
        ('{"event_id": "e1"}', "invalid_event", "type"),
        ('{"type": "response.create", "event_id": "e1"}', "invalid_value", "type"),
        ('{"type": "nope"}', "invalid_value", "type"),
        ('{"type": "transcription_session.update", "session": {}}', "invalid_value", "type"),
        ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type", "audio"),
        ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value", "session.type"),
        (
            '{"type": "session.update", "session": {"type": "transcription", "foo": 1}}',
            "unknown_parameter",
            "session.foo",
        ),
        (
            '{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/mp3"}}}}}',
            "invalid_value",
            "session.audio.input.format.type",
        ),
    ],
)
def test_a_bad_client_event_is_an_openai_error(text: str, code: str, param: str | None) -> None:
    with pytest.raises(Problem) as refused:
        parse(text)
    error = refused.value.error()
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error"), error
    assert error["message"]


def test_the_event_id_comes_back_and_audio_must_be_base64() -> None:
    with pytest.raises(Problem) as refused:
        parse('{"type": "nope", "event_id": "evt_7"}')
    assert refused.value.event_id == "evt_7"
    append = parse('{"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "a1"}')
    assert isinstance(append, Append)
    with pytest.raises(Problem) as bad:
        audio_bytes(append)
    assert (bad.value.param, bad.value.event_id) == ("audio", "a1")
    assert audio_bytes(Append(type="input_audio_buffer.append", audio="AAEC")) == b"\x00\x01\x02"


def _update(session: dict[str, object]) -> SessionUpdate:
    event = parse(json.dumps({"type": "session.update", "session": {"type": "transcription", **session}}))
    assert isinstance(event, SessionUpdate)
    return event


FLEET = cfg.FleetInfo(model="tiny.en", models=("tiny.en",), languages=("en",))


def test_session_update_applies_present_fields_and_null_turns_vad_off() -> None:
    s = cfg.apply(
        cfg.SessionSettings(),
        _update(
            {
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 16000},
                        "transcription": {"language": "en-US", "prompt": "Gutenberg", "keywords": ["Scribe"]},
                        "turn_detection": {"type": "server_vad", "threshold": 0.99, "silence_duration_ms": 200},
                    }
                },
                "include": ["item.input_audio_transcription.logprobs"],
            }
        ).session,
        FLEET,
        None,
    )
    assert (s.rate, s.language, s.logprobs) == (16000, "en", True)
    assert s.turn_detection == cfg.TurnDetection(threshold=0.95, prefix_padding_ms=200, silence_duration_ms=200)
    config = cfg.stream_config(s)
    assert config.sample_rate_hertz == 16000 and config.options.initial_prompt == "Gutenberg Scribe"
    assert config.speech_end_timeout.ToNanoseconds() == 200_000_000 and config.enable_utterance_finalized_events
    shown = cfg.describe(s, "sess_x", 0)
    assert shown["audio"]["input"]["turn_detection"]["threshold"] == 0.95  # type: ignore[index]
    manual = cfg.apply(s, _update({"audio": {"input": {"turn_detection": None}}}).session, FLEET, None)
    assert manual.turn_detection is None and manual.rate == 16000  # the rest stays
    assert manual.stream_key() != s.stream_key()


@pytest.mark.parametrize(
    ("audio_input", "code", "param"),
    [
        ({"format": {"type": "audio/pcm", "rate": 12345}}, "invalid_value", "session.audio.input.format.rate"),
        ({"format": {"type": "audio/pcmu", "rate": 16000}}, "invalid_value", "session.audio.input.format.rate"),
        ({"transcription": {"language": "fr"}}, "unsupported_language", "session.audio.input.transcription.language"),
        ({"turn_detection": {"type": "semantic_vad"}}, "unsupported_turn_detection", None),
        ({"turn_detection": {"type": "server_vad", "threshold": 1.5}}, "invalid_value", None),
        ({"turn_detection": {"type": "server_vad", "silence_duration_ms": 50}}, "invalid_value", None),
        ({"turn_detection": {"type": "server_vad", "prefix_padding_ms": -1}}, "invalid_value", None),
    ],
)
def test_a_session_update_scribe_cannot_honour_is_refused_whole(
    audio_input: dict[str, object], code: str, param: str | None
) -> None:
    before = cfg.SessionSettings()
    with pytest.raises(Problem) as refused:
        cfg.apply(before, _update({"audio": {"input": audio_input}}).session, FLEET, "u1")
    assert refused.value.code == code and refused.value.event_id == "u1"
    assert param is None or refused.value.param == param


def test_g711_tables_decode_silence_and_full_scale() -> None:
    assert G711["audio/pcmu"][0xFF] == 0 and G711["audio/pcmu"][0x00] == -32124
    assert G711["audio/pcma"][0xD5] == 8 and G711["audio/pcma"][0x2A] == -32256


# --- gRPC results to server events ----------------------------------------------------------------------


def test_server_vad_items_speech_events_deltas_and_completed_in_order() -> None:
    t = Translator(Ids("sess_abc"))
    t.start_stream(base_ms=1000, vad=True, padding_ms=300)
    out = t.feed(event(BEGIN, 0.5))
    out += t.feed(result("the quick brown", final=False, start=0.5))  # nothing agreed yet
    out += t.feed(result("the quick brown fox.", final=False, start=0.5))  # "the quick brown" agreed
    out += t.feed(result("the quick", final=True, start=0.5))  # agreement commits two words mid-utterance
    out += t.feed(result("brown fox jumps.", final=False, start=1.1))
    out += t.feed(result("brown fox jumps over", final=False, start=1.1))  # " fox" agreed
    out += t.feed(event(END, 2.5))
    out += t.feed(finalized(result("brown fox jumps over.", final=True, start=1.1)))
    out += t.feed(event(BEGIN, 4.0))
    out += t.feed(event(END, 4.6))
    out += t.feed(finalized(pb.StreamingTranscribeResponse()))  # an utterance whose end added no words
    assert kinds(out) == [
        "speech_started",
        "delta",  # "the quick brown"
        "delta",  # " fox"
        "speech_stopped",
        "committed",
        "delta",  # " jumps over." once final
        "completed",
        "speech_started",
        "speech_stopped",
        "committed",
        "completed",
    ]
    first, second = out[0]["item_id"], out[7]["item_id"]
    assert str(first) < str(second)
    assert out[0]["audio_start_ms"] == 1200 and out[3]["audio_end_ms"] == 3500
    deltas = "".join(str(e["delta"]) for e in out if e["type"].endswith("delta"))
    completed = out[6]
    assert completed["transcript"] == "the quick brown fox jumps over." == deltas
    assert out[4]["previous_item_id"] is None and out[9]["previous_item_id"] == first
    assert out[10]["transcript"] == "" and out[10]["item_id"] == second


def test_a_revised_interim_pauses_deltas_and_completed_is_authoritative() -> None:
    t = Translator(Ids("sess_abc"))
    t.logprobs = True
    t.start_stream(0, vad=True, padding_ms=0)
    out = t.feed(event(BEGIN, 0.0))
    out += t.feed(result("button burg was here", final=False))
    out += t.feed(result("button burg was here now", final=False))  # "button burg was here" agreed
    out += t.feed(result("Gutenberg was here today", final=False))  # diverges from what was sent
    out += t.feed(event(END, 2.0))
    out += t.feed(finalized(result("Gutenberg was here today.", final=True)))
    deltas = [e for e in out if e["type"].endswith("delta")]
    assert [d["delta"] for d in deltas] == ["button burg was here"]
    assert out[-1]["transcript"] == "Gutenberg was here today."
    assert [lp["token"] for lp in out[-1]["logprobs"]] == ["Gutenberg", "was", "here", "today."]
    assert deltas[0]["logprobs"][0]["logprob"] == pytest.approx(-0.6931, abs=1e-3)


def test_clear_drops_the_open_item_but_not_a_committed_one() -> None:
    t = Translator(Ids("sess_abc"))
    t.start_stream(0, vad=True, padding_ms=0)
    out = t.feed(event(BEGIN, 0.0))
    out += t.feed(event(END, 1.0))
    t.clear()  # the first utterance was committed: its text still comes
    out += t.feed(finalized(result("hello there", final=True)))
    out += t.feed(event(BEGIN, 2.0))  # speech after the clear point belongs to cleared audio
    out += t.feed(result("gone words", final=True, start=2.0))
    out += t.end()
    assert kinds(out) == ["speech_started", "speech_stopped", "committed", "delta", "completed"]


def test_manual_commit_joins_utterances_and_sends_text_only_after_the_commit() -> None:
    t = Translator(Ids("sess_abc"))
    t.start_stream(500, vad=False, padding_ms=0)
    out = t.feed(event(BEGIN, 0.0))
    out += t.feed(result("first sentence.", final=True))
    out += t.feed(finalized(pb.StreamingTranscribeResponse()))
    out += t.feed(result("second one", final=False, start=2.0))
    assert out == []  # nothing before the commit: no VAD events, no deltas
    out += t.commit(4000)
    out += t.feed(finalized(result("second one.", final=True, start=2.0)))
    out += t.end()
    assert kinds(out) == ["committed", "delta", "delta", "completed"]  # finals only, after the commit
    assert out[-1]["transcript"] == "first sentence. second one."
    assert out[-1]["usage"] == {"type": "duration", "seconds": 3.5}


def test_a_commit_with_no_speech_is_acknowledged_with_an_empty_item() -> None:
    t = Translator(Ids("sess_abc"))
    t.start_stream(0, vad=True, padding_ms=0)
    assert t.commit(2000) == []
    out = t.end()
    assert kinds(out) == ["committed", "completed"] and out[1]["transcript"] == ""
    # Committed while the last item, already ended by VAD, waits for its finals: the commit is its own item.
    t.start_stream(2000, vad=True, padding_ms=0)
    out = t.feed(event(BEGIN, 0.0)) + t.feed(event(END, 1.0))
    assert t.commit(4000) == []
    out += t.feed(finalized(result("hello", final=True))) + t.end()
    assert kinds(out)[-3:] == ["completed", "committed", "completed"] and out[-1]["transcript"] == ""
    # Committed mid-speech: the open item is the commit's, no empty one.
    t.start_stream(4000, vad=True, padding_ms=0)
    out = t.feed(event(BEGIN, 0.0))
    t.commit(5000)
    out += t.feed(event(END, 1.0)) + t.feed(finalized(result("yes", final=True))) + t.end()
    assert kinds(out) == ["speech_started", "speech_stopped", "committed", "delta", "completed"]


def test_speaker_labels_become_segment_events() -> None:
    """Speaker diarization (another issue) adds WordInfo.speaker_label: read wherever it is present. The
    words here are stand-ins with that attribute, so the test runs before the field exists."""
    t = Translator(Ids("sess_abc"))
    t.start_stream(0, vad=True, padding_ms=0)
    base = result("hi there yes", final=True).results[0]
    words = [
        SimpleNamespace(
            word=w.word, start_offset=w.start_offset, end_offset=w.end_offset, probability=0.9, speaker_label=who
        )
        for w, who in zip(base.alternatives[0].words, ["1", "1", "2"], strict=True)
    ]
    labelled = SimpleNamespace(
        alternatives=[SimpleNamespace(words=words, transcript="hi there yes")],
        is_final=True,
        result_start_offset=_d(0),
        result_end_offset=_d(1),
    )
    response = SimpleNamespace(results=[labelled], speech_event_type=FINALIZED, speech_event_offset=_d(1.0))
    out = t.feed(event(BEGIN, 0.0)) + t.feed(event(END, 1.0)) + t.feed(response)  # type: ignore[arg-type]
    segments = [e for e in out if e["type"].endswith("segment")]
    assert [(s["speaker"], s["text"]) for s in segments] == [("1", "hi there"), ("2", "yes")]
    assert out[-1]["transcript"] == "hi there yes"


# --- Who may connect --------------------------------------------------------------------------------------


def test_tokens_from_the_header_or_the_browser_subprotocol() -> None:
    assert token_and_protocol("Bearer abc", []) == ("abc", None)
    assert token_and_protocol("", ["realtime", "openai-insecure-api-key.k123"]) == ("k123", "realtime")
    assert token_and_protocol("", ["openai-insecure-api-key.k123", "openai-beta.realtime-v1"]) == (
        "k123",
        "openai-beta.realtime-v1",
    )
    assert token_and_protocol("", []) == (None, None)


def test_origins_and_the_session_counter() -> None:
    assert origin_allowed(None, "h:1", "http", ())
    assert origin_allowed("http://h:1", "h:1", "http", ())
    assert not origin_allowed("https://evil.example", "h:1", "http", ())
    assert origin_allowed("https://ok.example/", "h:1", "http", ("https://ok.example",))
    assert origin_allowed("https://any.example", "h:1", "http", ("*",))
    counter = SessionCounter(1)
    assert counter.acquire("a") and not counter.acquire("a") and counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
