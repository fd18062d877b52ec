"""Random but well-formed requests through the gateway: every call ends in a defined status, and the
workers stay the same SERVING processes.

`make test` runs FUZZ_EXAMPLES (default 20) examples of each test; `make fuzz` runs many more.
"""

from __future__ import annotations

import os
import string
from collections import Counter

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.audio import SUPPORTED_SAMPLE_RATES
from services.common.errors import error_reason
from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import clip, read_wav

#: Statuses a call may end with. UNKNOWN, INTERNAL or UNAVAILABLE would mean a crash or a lost worker.
DEFINED = {"OK", "INVALID_ARGUMENT", "OUT_OF_RANGE"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
CLIPS = [clip(name) for name in ("speech_short.flac", "speech_short.ogg", "speech_short.wav", "tone.wav")]


@st.composite
def mutated_clip(draw: st.DrawFn) -> bytes:
    """A real file cut short, with bytes overwritten, or with garbage spliced in."""
    data = bytearray(draw(st.sampled_from(CLIPS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


PCM, _, _ = read_wav("speech_short.wav")


@st.composite
def speech_pcm(draw: st.DrawFn) -> bytes:
    """A slice of real 16 kHz speech as LINEAR16, possibly cut mid-sample."""
    start = draw(st.integers(0, len(PCM)))
    return PCM[start : start + draw(st.integers(0, 16000 * 2 * 2))]


# Two thirds of the requests are coherent (a file sent as a container, samples as LINEAR16 at a real rate,
# sane options), so they get past validation into decoding and the model; the rest are wild throughout.
encodings = st.integers(0, 4)  # 3 and 4 are values no AudioEncoding has
rates = st.one_of(st.sampled_from(SUPPORTED_SAMPLE_RATES), st.integers(-(2**31), 2**31 - 1))
channels = st.integers(-3, 9)
coherent_audio = st.one_of(
    st.tuples(
        mutated_clip(),
        st.sampled_from([pb.AUDIO_ENCODING_UNSPECIFIED, pb.AUDIO_ENCODING_CONTAINER]),
        st.just(0),
        st.just(0),
    ),
    st.tuples(
        speech_pcm(),
        st.just(pb.AUDIO_ENCODING_LINEAR16),
        st.sampled_from(SUPPORTED_SAMPLE_RATES),
        st.sampled_from([0, 1, 2]),
    ),
)
wild_audio = st.tuples(st.one_of(st.binary(max_size=4096), mutated_clip(), speech_pcm()), encodings, rates, channels)
sane_options = st.builds(
    pb.RecognitionOptions,
    language_code=st.sampled_from(["", "en", "EN", "en-US", "en_GB"]),
    task=st.sampled_from([pb.TASK_UNSPECIFIED, pb.TASK_TRANSCRIBE]),
    beam_size=st.integers(0, 5),
    enable_word_time_offsets=st.booleans(),
    vad_filter=st.booleans(),
    initial_prompt=st.text(max_size=200),
)
wild_options = st.builds(
    pb.RecognitionOptions,
    language_code=st.one_of(st.sampled_from(["fr", "xx", "auto", "en-"]), st.text(max_size=16)),
    task=st.integers(0, 3),
    beam_size=st.integers(0, 2**32 - 1),
    enable_word_time_offsets=st.booleans(),
    vad_filter=st.booleans(),
    initial_prompt=st.text(min_size=0, max_size=1100),
)
options = st.one_of(st.just(pb.RecognitionOptions()), sane_options, wild_options)
request_ids = st.text(alphabet=string.ascii_letters + string.digits + " -_.:/+=", max_size=80)


def _config() -> st.SearchStrategy[pb.StreamingTranscribeRequest]:
    sane = st.builds(
        pb.StreamingConfig,
        encoding=st.sampled_from([pb.AUDIO_ENCODING_UNSPECIFIED, pb.AUDIO_ENCODING_LINEAR16]),
        sample_rate_hertz=st.just(16000),
        audio_channel_count=st.sampled_from([0, 1]),
        options=st.one_of(st.just(pb.RecognitionOptions()), sane_options),
        interim_results=st.booleans(),
        single_utterance=st.booleans(),
    )
    wild = st.builds(
        pb.StreamingConfig,
        encoding=encodings,
        sample_rate_hertz=rates,
        audio_channel_count=channels,
        options=options,
        interim_results=st.booleans(),
        single_utterance=st.booleans(),
    )
    return st.one_of(sane, sane, wild).map(lambda c: pb.StreamingTranscribeRequest(streaming_config=c))


_audio_message = st.one_of(speech_pcm(), speech_pcm(), st.binary(max_size=6400)).map(
    lambda b: pb.StreamingTranscribeRequest(audio_content=b)
)
_any_message = st.one_of(_config(), _audio_message, st.just(pb.StreamingTranscribeRequest()))
streams = st.one_of(
    st.tuples(_config(), st.lists(_audio_message, max_size=8)).map(lambda t: [t[0], *t[1]]),
    st.lists(_any_message, max_size=6),
)
OUTCOMES: Counter[str] = Counter()


def _check_fleet(fleet: Fleet, pids: dict[str, int]) -> None:
    now = {name: w.supervisor_pid for name, w in fleet.workers().items()}
    assert now == pids, "a worker restarted"
    assert fleet.serving() == set(pids), fleet.workers()


def _check_status(method: str, err: grpc.RpcError | None) -> None:
    reason = error_reason(err.trailing_metadata()) if err is not None else None
    OUTCOMES[f"{method} {err.code().name if err is not None else 'OK'} {reason or ''}".strip()] += 1
    if err is None:
        return
    assert err.code().name in DEFINED, (err.code(), err.details())
    assert error_reason(err.trailing_metadata()), f"{err.code().name} without an ErrorInfo reason: {err.details()}"


def test_fuzz_transcribe(fleet: Fleet) -> None:
    fleet.wait_all_serving()
    pids = {name: w.supervisor_pid for name, w in fleet.workers().items()}

    @FUZZ
    @given(
        sound=st.one_of(coherent_audio, coherent_audio, wild_audio),
        opts=options,
        request_id=request_ids,
    )
    def run(sound: tuple[bytes, int, int, int], opts: pb.RecognitionOptions, request_id: str) -> None:
        audio, encoding, rate, channel_count = sound
        request = pb.TranscribeRequest(
            audio_content=audio,
            encoding=encoding,  # type: ignore[arg-type]
            sample_rate_hertz=rate,
            audio_channel_count=channel_count,
            options=opts,
        )
        err = None
        try:
            fleet.transcription.Transcribe(request, timeout=180, metadata=(("x-request-id", request_id),))
        except grpc.RpcError as exc:
            err = exc
        _check_status("Transcribe", err)
        _check_fleet(fleet, pids)

    run()


def test_fuzz_streaming(fleet: Fleet) -> None:
    fleet.wait_all_serving()
    pids = {name: w.supervisor_pid for name, w in fleet.workers().items()}

    @FUZZ
    @given(requests=streams)
    def run(requests: list[pb.StreamingTranscribeRequest]) -> None:
        err = None
        try:
            for response in fleet.transcription.StreamingTranscribe(iter(requests), timeout=180):
                assert response.worker_id
        except grpc.RpcError as exc:
            err = exc
        _check_status("StreamingTranscribe", err)
        _check_fleet(fleet, pids)

    run()


def teardown_module() -> None:
    """What the examples ended with (shown by `make fuzz`, which runs pytest with -s)."""
    print("\nfuzz outcomes:")
    for outcome, count in sorted(OUTCOMES.items()):
        print(f"  {count:6d}  {outcome}")
