"""Batch jobs on a real gateway over the fleet's real workers, stored in a real SQLite file: create from an
upload or a path, results in every format, listing by state and label, watching with resumption, who
sees which job, and the refusals a user can act on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import srt
import webvtt
from google.rpc import error_details_pb2
from scribe_client import ScribeClient
from scribe_client.formats import render

from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb
from tests.conftest import TOKEN_A, TOKEN_B, Fleet, Process
from tests.helpers import DATA, SAID, clip, speech_recording, wer
from tests.jobs_support import client, job_gateway, reason, wait_state


def reason_of(status: object) -> str | None:
    for detail in status.details:  # type: ignore[attr-defined]
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


DONE: set[int] = {jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    gw = job_gateway(fleet, tmp_path_factory.mktemp("jobs-gateway"), AUTH_TOKENS=f"{TOKEN_A},{TOKEN_B}")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def jobs(gateway: Process) -> Iterator[ScribeClient]:
    with client(gateway) as c:
        yield c


def test_an_uploaded_job_runs_on_the_workers_and_gives_every_format(jobs: ScribeClient, gateway: Process) -> None:
    job = jobs.jobs.submit(DATA / "speech_long.wav", formats=["srt"], labels={"suite": "basic"}, display_name="long")
    assert job.state == jpb.JOB_STATE_QUEUED and job.id.startswith("job_") and job.audio_bytes > 0
    assert 10 < job.audio_duration.ToNanoseconds() / 1e9 < 20  # from the WAV header, at creation
    seen = list(jobs.jobs.watch(job.id))
    states = [j.state for j in seen]
    assert states[-1] == jpb.JOB_STATE_SUCCEEDED, seen[-1]
    assert jpb.JOB_STATE_RUNNING in states
    versions = [j.version for j in seen]
    assert versions == sorted(set(versions))
    final = seen[-1]
    assert final.progress_percent == 100 and final.runs == 1 and final.pieces_done == final.pieces_total == 1

    result = jobs.jobs.result(job.id)
    assert wer(SAID["speech_long.wav"], result.result.transcript) < 15
    assert result.result.request_id == job.id and not result.content
    # The same file through Transcribe on the same workers says the same.
    direct = jobs.transcribe(DATA / "speech_long.wav")
    assert result.result.transcript == direct.transcript
    # Every format the CLI writes, rendered by the server exactly as scribe_client.formats does.
    for fmt in ("json", "txt", "srt", "vtt", "tsv"):
        rendered = jobs.jobs.result(job.id, fmt)
        assert rendered.content == render(result.result, fmt), fmt
    cues = list(srt.parse(jobs.jobs.result(job.id, "srt").content))
    assert cues and cues[0].content
    assert jobs.jobs.result(job.id, "srt").media_type == "application/x-subrip"
    assert webvtt.from_string(jobs.jobs.result(job.id, "vtt").content).captions


def test_a_long_upload_is_decoded_piece_by_piece(jobs: ScribeClient) -> None:
    job = jobs.jobs.submit(speech_recording(95), labels={"suite": "pieces"})
    final = jobs.jobs.wait(job.id)
    assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
    assert final.pieces_total == final.pieces_done >= 3  # JOB_PIECE_SECONDS=30
    result = jobs.jobs.result(job.id).result
    assert abs(result.audio_duration.ToNanoseconds() / 1e9 - 95) < 0.1
    starts = [s.start_offset.ToNanoseconds() for s in result.segments]
    assert starts == sorted(starts) and [s.id for s in result.segments] == list(range(len(starts)))
    assert result.segments[-1].end_offset.ToNanoseconds() / 1e9 > 80
    text = result.transcript.lower()  # the clips in turn: each piece's words are there
    assert text.count("morning") >= 3 and "weather" in text and "recognition" in text, text


def test_a_path_source_under_job_source_dirs_is_read_where_it_is(jobs: ScribeClient, tmp_path: Path) -> None:
    job = jobs.jobs.submit(path=str(DATA / "speech_short.flac"), formats=["txt"])
    assert job.audio_bytes == 0 and job.spec.path.endswith("speech_short.flac")
    final = jobs.jobs.wait(job.id)
    assert final.state == jpb.JOB_STATE_SUCCEEDED
    assert "fox" in jobs.jobs.result(job.id, "txt").content.lower()

    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(clip("speech_short.wav"))
    with pytest.raises(grpc.RpcError) as refused:
        jobs.jobs.submit(path=str(outside))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(refused.value) == "PATH_NOT_ALLOWED"
    with pytest.raises(grpc.RpcError) as sneaky:
        jobs.jobs.submit(path=str(DATA / ".." / "conftest.py"))  # resolved before the check
    assert sneaky.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as url:
        jobs.jobs.submit(url="https://example.com/talk.mp3")
    assert url.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(url.value) == "URL_SOURCES_OFF"


def test_bad_requests_get_clear_statuses(jobs: ScribeClient) -> None:
    cases = [
        (dict(labels={"bad key!": "x"}), "BAD_LABELS"),
        (dict(labels={f"k{i}": "v" for i in range(17)}), "BAD_LABELS"),
        (dict(formats=["srt"], display_name="x" * 300), "BAD_NAME"),
        (dict(webhook_url="ftp://example.com/hook"), "BAD_URL"),
    ]
    for fields, expected in cases:
        with pytest.raises(grpc.RpcError) as err:
            jobs.jobs.submit(clip("speech_short.wav"), **fields)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(err.value) == expected, fields
    with pytest.raises(grpc.RpcError) as model:
        jobs.jobs.submit(clip("speech_short.wav"), spec=jpb.JobSpec(options=pb.RecognitionOptions(model="large-v9")))
    assert model.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(model.value) == "UNKNOWN_MODEL"
    with pytest.raises(grpc.RpcError) as empty:
        jobs.jobs.submit(b"")
    assert reason(empty.value) == "EMPTY_AUDIO"
    with pytest.raises(grpc.RpcError) as missing:
        jobs.jobs.get("job_nope")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as token:
        jobs.jobs.list_page(page_token="not-a-token")
    assert reason(token.value) == "BAD_PAGE_TOKEN"

    garbage = jobs.jobs.submit(b"this is not audio at all" * 100)
    failed = jobs.jobs.wait(garbage.id)
    assert failed.state == jpb.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and failed.error.message
    # The worker's google.rpc.Status whole, ErrorInfo and all.
    assert reason_of(failed.error) == "UNDECODABLE_AUDIO"
    with pytest.raises(grpc.RpcError) as no_result:
        jobs.jobs.result(garbage.id)
    assert no_result.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_request_id_makes_a_retried_create_return_the_same_job(jobs: ScribeClient) -> None:
    first = jobs.jobs.submit(clip("speech_short.wav"), request_id="retry-me-1")
    again = jobs.jobs.submit(clip("speech_short.wav"), request_id="retry-me-1")
    assert again.id == first.id
    other = jobs.jobs.submit(clip("speech_short.wav"), request_id="retry-me-2")
    assert other.id != first.id


def test_listing_pages_through_states_and_labels(jobs: ScribeClient) -> None:
    made = [jobs.jobs.submit(clip("speech_short.wav"), labels={"suite": "list", "n": str(i)}) for i in range(7)]
    for job in made:
        wait_state(jobs, job.id, DONE)
    listed = list(jobs.jobs.list(labels={"suite": "list"}, page_size=3))
    assert [j.id for j in listed] == [j.id for j in reversed(made)]  # newest first, across three pages
    page = jobs.jobs.list_page(labels={"suite": "list"}, page_size=3)
    assert len(page.jobs) == 3 and page.next_page_token
    one = list(jobs.jobs.list(labels={"suite": "list", "n": "4"}))
    assert [j.id for j in one] == [made[4].id]
    succeeded = {j.id for j in jobs.jobs.list(states=["succeeded"], labels={"suite": "list"})}
    assert succeeded == {j.id for j in made}
    assert not list(jobs.jobs.list(states=["queued", "running"], labels={"suite": "list"}))


def test_each_token_sees_only_its_own_jobs(gateway: Process) -> None:
    with client(gateway, TOKEN_A) as a, client(gateway, TOKEN_B) as b:
        mine = a.jobs.submit(clip("speech_short.wav"), labels={"suite": "tenants"})
        assert mine.id not in {j.id for j in b.jobs.list(labels={"suite": "tenants"})}
        for call in (b.jobs.get, b.jobs.cancel, b.jobs.delete, b.jobs.result):
            with pytest.raises(grpc.RpcError) as err:
                call(mine.id)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert a.jobs.get(mine.id).id == mine.id


def test_watch_resumes_after_the_last_version_seen(jobs: ScribeClient) -> None:
    job = jobs.jobs.submit(speech_recording(65))
    first = next(iter(jobs.jobs.watch(job.id)))  # one message, then the stream is dropped
    rest = list(jobs.jobs.watch(job.id, after_version=first.version))
    assert rest and all(j.version > first.version for j in rest)
    assert rest[-1].state == jpb.JOB_STATE_SUCCEEDED
    # A watch of a finished job sends its final state once and ends.
    assert [j.version for j in jobs.jobs.watch(job.id)] == [rest[-1].version]


def test_the_store_is_an_sqlite_file_in_wal_mode(gateway: Process) -> None:
    assert gateway.run_dir is not None
    database = gateway.run_dir / "jobs" / "jobs.db"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] > 0


def test_reflection_serves_the_job_service_with_its_comments(fleet: Fleet, gateway: Process) -> None:
    auth = f"authorization: Bearer {TOKEN_A}"
    listed = fleet.run("grpcurl", "-plaintext", "-H", auth, gateway.address, "list").stdout.split()
    assert "transcription.v1.JobService" in listed
    described = fleet.run(
        "grpcurl", "-plaintext", "-H", auth, gateway.address, "describe", "transcription.v1.JobService.WatchJob"
    ).stdout
    assert "after_version" in described and "After a disconnect" in described
    job = fleet.run("grpcurl", "-plaintext", "-H", auth, gateway.address, "describe", "transcription.v1.Job").stdout
    assert "google.rpc.Status error" in job


@pytest.mark.jobs_heavy
def test_a_job_store_that_does_not_answer_leaves_the_gateway_serving(fleet: Fleet, tmp_path: Path) -> None:
    """PostgreSQL named but unreachable: interactive calls go on, JobService says UNAVAILABLE with a reason."""
    from tests.conftest import start_gateway
    from tests.jobs_support import both_workers, job_env

    nowhere = f"postgresql://scribe@/scribe?host={tmp_path / 'no-server'}"
    gw = start_gateway(fleet, tmp_path / "gw", job_env(JOBS_DATABASE_URL=nowhere), workers=both_workers(fleet))
    try:
        with client(gw, None) as c:
            assert "fox" in c.transcribe(clip("speech_short.wav")).transcript.lower()
            with pytest.raises(grpc.RpcError) as down:
                c.jobs.list_page()
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE and reason(down.value) == "JOB_STORE_UNAVAILABLE"
        assert '"job_store_unavailable"' in gw.logs()
    finally:
        gw.stop()


def test_the_asyncio_client_has_the_same_calls(gateway: Process) -> None:
    import asyncio

    from scribe_client import AsyncScribeClient

    async def scenario() -> tuple[list[int], str, list[str]]:
        async with AsyncScribeClient(gateway.address, token=TOKEN_A) as c:
            job = await c.jobs.submit(clip("speech_short.wav"), labels={"suite": "aio"}, formats=["vtt"])
            states = [int(j.state) async for j in c.jobs.watch(job.id)]
            vtt = (await c.jobs.result(job.id, "vtt")).content
            listed = [j.id async for j in c.jobs.list(labels={"suite": "aio"})]
            await c.jobs.delete(job.id)
            return states, vtt, listed

    states, vtt, listed = asyncio.run(scenario())
    assert states[-1] == jpb.JOB_STATE_SUCCEEDED and vtt.startswith("WEBVTT") and len(listed) == 1


@pytest.mark.jobs_heavy
def test_speaker_labels_work_in_jobs_whole_and_in_pieces(jobs: ScribeClient) -> None:
    """RecognitionOptions go through whole: a job with diarization_config gets the labels a Transcribe
    gets, and a job cut into pieces keeps one label per voice across them (clustered once at the end)."""
    from tests.speakers_data import conversation, pcm16, word_labels

    audio, turns = conversation("two_voices")
    options = pb.RecognitionOptions(enable_word_time_offsets=True, diarization_config=pb.SpeakerDiarizationConfig())
    whole = jobs.jobs.submit(spec=jpb.JobSpec(options=options, request_id="speakers-whole"), audio=audio)
    pcm = pcm16(audio)
    spec = jpb.JobSpec(
        options=options,
        encoding=pb.AUDIO_ENCODING_LINEAR16,
        sample_rate_hertz=16000,
        audio_channel_count=1,
        request_id="speakers-pieces",
    )
    cut = jobs.jobs.submit(spec=spec, audio=pcm * 2)  # 68 s: pieces of about 30 s (JOB_PIECE_SECONDS)
    for job, copies in ((whole, 1), (cut, 2)):
        final = jobs.jobs.wait(job.id)
        assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
        result = jobs.jobs.result(job.id).result
        assert [s.speaker_label for s in result.speakers] == ["1", "2"], job.id
        assert not result.HasField("speaker_embeddings")
        found = [
            (w.start_offset.ToNanoseconds() / 1e9, w.end_offset.ToNanoseconds() / 1e9, w.speaker_label)
            for s in result.segments
            for w in s.words
        ]
        half = len(pcm) / 2 / 16000
        for k in range(copies):
            part = [(a - k * half, b - k * half, s) for a, b, s in found if k * half <= a < (k + 1) * half]
            for speaker, labels in word_labels(part, turns).items():
                assert set(labels) == {{"A": "1", "B": "2"}[speaker]}, (job.id, k, speaker, labels)
        if copies == 2:
            assert final.pieces_total >= 2
    with pytest.raises(grpc.RpcError) as bad:
        jobs.jobs.submit(
            clip("speech_short.wav"),
            spec=jpb.JobSpec(
                options=pb.RecognitionOptions(
                    diarization_config=pb.SpeakerDiarizationConfig(min_speaker_count=4, max_speaker_count=2)
                )
            ),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(bad.value) == "BAD_DIARIZATION_CONFIG"
