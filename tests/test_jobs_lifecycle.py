"""Jobs through what happens to them: webhooks to a real local receiver (signatures checked with the
standardwebhooks package, retries after 500, denied addresses), cancel mid-job, retention, a full spool,
fairness between two tokens, and a gateway killed with SIGKILL mid-job that resumes on restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from services.gen import jobs_pb2 as jpb
from tests.conftest import TOKEN_A, TOKEN_B, Fleet, Process, start_gateway
from tests.helpers import DATA, clip, speech_recording, wait_for
from tests.jobs_support import (
    SECRET,
    both_workers,
    busy,
    client,
    decoded_seconds,
    file_server,
    gateway_id,
    idle_gateway,
    job_env,
    job_gateway,
    kill9,
    reason,
    until,
    wait_state,
    webhook_receiver,
)


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    gw = job_gateway(fleet, tmp_path_factory.mktemp("jobs-life"), JOB_ALLOW_URLS="true")
    yield gw
    gw.stop()


def test_a_webhook_is_signed_retried_after_500_and_every_attempt_recorded(gateway: Process) -> None:
    with webhook_receiver() as receiver, client(gateway) as c:
        receiver.answers = [500, 500]
        job = c.jobs.submit(
            clip("speech_short.wav"), webhook_url=receiver.url, formats=["srt", "txt"], labels={"project": "hooks"}
        )
        deliveries = receiver.wait(3)
        assert [d.answered for d in deliveries[:3]] == [500, 500, 200]
        until(lambda: c.jobs.get(job.id).webhook_state == jpb.WEBHOOK_STATE_DELIVERED, 10)
        final = c.jobs.get(job.id)
        assert [a.http_status for a in final.webhook_attempts] == [500, 500, 200]
        assert [a.attempt for a in final.webhook_attempts] == [1, 2, 3]
        assert final.webhook_attempts[0].error == "HTTP 500" and not final.webhook_attempts[2].error
        times = [d.at for d in deliveries[:3]]
        # Backoff: JOB_WEBHOOK_RETRY_S=0.3 before the first retry, doubled before the second (jitter 10%).
        assert times[1] - times[0] >= 0.27 and times[2] - times[1] >= 0.54, times
        # Every attempt verifies with the standardwebhooks package, and carries the same message id.
        verifier = Webhook(SECRET)
        bodies = [verifier.verify(d.body, d.headers) for d in deliveries[:3]]
        assert len({d.headers["webhook-id"] for d in deliveries[:3]}) == 1
        body = bodies[-1]
        assert body["type"] == "job.succeeded" and body["data"]["id"] == job.id
        assert body["data"]["labels"] == {"project": "hooks"}
        assert "fox" in body["data"]["outputs"]["txt"].lower() and "-->" in body["data"]["outputs"]["srt"]
        # A forged or altered body does not verify.
        with pytest.raises(WebhookVerificationError):
            verifier.verify(deliveries[2].body.replace(b"succeeded", b"failed"), deliveries[2].headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 40).verify(deliveries[2].body, deliveries[2].headers)


def test_webhooks_to_denied_addresses_are_refused(fleet: Fleet, gateway: Process, tmp_path: Path) -> None:
    with client(gateway) as c:
        # Allowed loopback does not open link-local (cloud metadata) or private ranges.
        for url in ("http://169.254.169.254/latest", "http://10.1.2.3/hook", "http://[::1]:9/hook", "http://0.0.0.0/"):
            with pytest.raises(grpc.RpcError) as err:
                c.jobs.submit(clip("speech_short.wav"), webhook_url=url)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err.value) == "ADDRESS_DENIED", url
    strict = start_gateway(
        fleet, tmp_path / "strict", job_env(JOB_ALLOW_NETWORKS="", JOB_ALLOW_URLS="true"), workers=both_workers(fleet)
    )
    try:
        with webhook_receiver() as receiver, file_server(DATA) as files, client(strict) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.jobs.submit(clip("speech_short.wav"), webhook_url=receiver.url)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "127.0.0.1" in err.value.details()
            with pytest.raises(grpc.RpcError) as named:
                c.jobs.submit(clip("speech_short.wav"), webhook_url=receiver.url.replace("127.0.0.1", "localhost"))
            assert named.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert not receiver.deliveries
            # A URL source is checked the same way: the gateway never asks a loopback server for it.
            with pytest.raises(grpc.RpcError) as source:
                c.jobs.submit(url=f"{files.url}/speech_short.wav")
            assert source.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(source.value) == "ADDRESS_DENIED"
            assert not files.asked and not list(c.jobs.list())
    finally:
        strict.stop()


def test_a_url_source_is_fetched_through_redirects_and_transcribed(gateway: Process) -> None:
    with file_server(DATA) as files, client(gateway) as c:
        job = c.jobs.submit(url=f"{files.url}/moved/speech_short.wav", labels={"source": "url"})
        final = wait_state(c, job.id, {jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED})
        assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
        assert files.asked == ["/moved/speech_short.wav", "/speech_short.wav"]  # fetched once, at its run
        assert final.audio_bytes == len(clip("speech_short.wav"))
        result = c.jobs.result(job.id, "txt")
        assert result.result.transcript == c.transcribe(clip("speech_short.wav")).transcript
        assert "fox" in result.content.lower()
        # A URL that answers 404 fails its job with a status that says so; the gateway goes on serving.
        missing = c.jobs.submit(url=f"{files.url}/no-such.wav")
        failed = wait_state(c, missing.id, {jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED})
        assert failed.state == jpb.JOB_STATE_FAILED
        assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and "404" in failed.error.message


def test_jobs_queued_per_token_are_bounded(fleet: Fleet, tmp_path: Path) -> None:
    """JOB_MAX_QUEUED_PER_TOKEN: a client past it is refused RESOURCE_EXHAUSTED; another client is not;
    a job that ends makes room again."""
    env = job_env(AUTH_TOKENS=f"{TOKEN_A},{TOKEN_B}", JOB_MAX_QUEUED_PER_TOKEN="2")
    front = idle_gateway(fleet, tmp_path / "bounded", env)  # runs nothing: its jobs stay queued
    try:
        with client(front, TOKEN_A) as a, client(front, TOKEN_B) as b:
            first, _ = (a.jobs.submit(clip("speech_short.wav")) for _ in range(2))
            with pytest.raises(grpc.RpcError) as many:
                a.jobs.submit(clip("speech_short.wav"), timeout=5)  # not the 30 s its RetryInfo asks to wait
            assert many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(many.value) == "TOO_MANY_JOBS"
            assert "JOB_MAX_QUEUED_PER_TOKEN=2" in many.value.details()
            assert b.jobs.submit(clip("speech_short.wav")).state == jpb.JOB_STATE_QUEUED  # another client's own bound
            a.jobs.cancel(first.id)
            assert a.jobs.submit(clip("speech_short.wav")).state == jpb.JOB_STATE_QUEUED
            assert len(list(a.jobs.list(states=["queued"]))) == 2
    finally:
        front.stop()


def test_cancel_mid_job_frees_the_workers(fleet: Fleet, gateway: Process) -> None:
    with client(gateway) as c:
        job = c.jobs.submit(speech_recording(300))
        wait_state(c, job.id, {jpb.JOB_STATE_RUNNING})
        until(lambda: busy(fleet) > 0, 30)
        cancelled = c.jobs.cancel(job.id)
        assert cancelled.state == jpb.JOB_STATE_CANCELLED and cancelled.end_time.seconds
        # The pieces on the workers are cancelled with the job: the workers are idle again at once.
        assert wait_for(lambda: busy(fleet) == 0, 10, 0.1), fleet.workers()
        after = c.jobs.get(job.id)
        assert after.state == jpb.JOB_STATE_CANCELLED and after.pieces_done < 10
        assert c.jobs.cancel(job.id).state == jpb.JOB_STATE_CANCELLED  # a second cancel changes nothing


@pytest.mark.jobs_heavy
def test_retention_removes_finished_jobs_and_their_audio(fleet: Fleet, tmp_path: Path) -> None:
    gw = start_gateway(fleet, tmp_path / "retention", job_env(JOB_RETENTION_H="0.001"), workers=both_workers(fleet))
    try:
        with client(gw) as c:
            job = c.jobs.submit(clip("speech_short.wav"))
            assert gw.run_dir is not None
            audio = gw.run_dir / "jobs" / "audio" / f"{job.id}.audio"
            assert audio.is_file()
            wait_state(c, job.id, {jpb.JOB_STATE_SUCCEEDED})

            def gone() -> bool:
                try:
                    c.jobs.get(job.id)
                    return False
                except grpc.RpcError as err:
                    return err.code() == grpc.StatusCode.NOT_FOUND

            assert wait_for(gone, 30, 0.2)
            assert not audio.exists()
    finally:
        gw.stop()


def test_a_full_spool_refuses_new_uploads_cleanly(fleet: Fleet, tmp_path: Path) -> None:
    # 600 kB of spool: one 400 kB upload fits, a second does not.
    gw = start_gateway(fleet, tmp_path / "spool", job_env(JOB_SPOOL_MAX_GB="0.0006"), workers=both_workers(fleet))
    try:
        with client(gw) as c:
            first = c.jobs.submit(speech_recording(12))  # ~384 kB of WAV
            with pytest.raises(grpc.RpcError) as full:
                c.jobs.submit(speech_recording(12), timeout=5)  # not the 60 s its RetryInfo asks to wait
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(full.value) == "JOB_SPOOL_FULL"
            assert "JOB_SPOOL_MAX_GB" in full.value.details()
            assert gw.run_dir is not None
            spool = gw.run_dir / "jobs" / "audio"
            assert [p.name for p in spool.glob("*.audio")] == [f"{first.id}.audio"]
            assert not [p for p in (spool / ".incoming").rglob("*") if p.is_file()]  # nothing half-written stays
            assert wait_state(c, first.id, {jpb.JOB_STATE_SUCCEEDED}).state == jpb.JOB_STATE_SUCCEEDED
            assert [j.id for j in c.jobs.list()] == [first.id]
            c.jobs.delete(first.id)  # deleting frees the room
            assert not (spool / f"{first.id}.audio").exists()
            again = c.jobs.submit(speech_recording(12))
            assert wait_state(c, again.id, {jpb.JOB_STATE_SUCCEEDED}).state == jpb.JOB_STATE_SUCCEEDED
    finally:
        gw.stop()


@pytest.mark.jobs_heavy
def test_two_tokens_jobs_interleave(fleet: Fleet, tmp_path: Path) -> None:
    """Client A queues eight jobs, then client B three; they run alternately until B's are done."""
    shared = job_env(
        AUTH_TOKENS=f"{TOKEN_A},{TOKEN_B}",
        JOB_WORKER_SLOTS="1",  # one piece at a time: the order jobs start in is the order they were chosen
        JOBS_DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",  # two gateways on one host share one file
        JOB_SPOOL_DIR=str(tmp_path / "spool"),
    )
    # Everything is queued through a gateway that runs nothing, before the one that runs jobs starts.
    front = idle_gateway(fleet, tmp_path / "front", shared)
    runner = None
    try:
        with client(front, TOKEN_A) as a, client(front, TOKEN_B) as b:
            many = [a.jobs.submit(clip("speech_short.wav"), labels={"who": "a"}) for _ in range(8)]
            few = [b.jobs.submit(clip("speech_short.wav"), labels={"who": "b"}) for _ in range(3)]
            runner = start_gateway(
                fleet, tmp_path / "runner", shared, workers=f"unix://{fleet.run_dir / 'worker-00.sock'}"
            )
            finished = [
                wait_state(x, j.id, {jpb.JOB_STATE_SUCCEEDED})
                for x, j in [(a, j) for j in many] + [(b, j) for j in few]
            ]
        order = "".join(j.spec.labels["who"] for j in sorted(finished, key=lambda j: j.start_time.ToNanoseconds()))
        # First come first served would be aaaaaaaabbb. Fair: each claim goes to the client with fewer jobs
        # running, so B's three start among the first few (exactly where depends on which run of the two
        # claimed at once reaches the slot first: ababab..., abbab...).
        assert order.index("b") <= 1 and order.rindex("b") <= 6, order
        assert {j.gateway_id for j in finished} == {gateway_id(runner)}
    finally:
        front.stop()
        if runner is not None:
            runner.stop()


@pytest.mark.jobs_heavy
def test_a_gateway_killed_mid_job_resumes_from_its_last_finished_piece(fleet: Fleet, tmp_path: Path) -> None:
    folder = tmp_path / "lone"
    env = job_env(JOB_WORKER_SLOTS="1")
    gw = start_gateway(fleet, folder, env, workers=both_workers(fleet))
    audio_s = 240.0
    try:
        with client(gw) as c:
            job = c.jobs.submit(speech_recording(audio_s), labels={"suite": "kill"})
            before = decoded_seconds(fleet)
            until(lambda: c.jobs.get(job.id).pieces_done >= 3, 120)
            done_before = c.jobs.get(job.id).pieces_done
            kill9(gw)
        # The same RUN_DIR is the same gateway id: the restarted gateway takes its job back at once.
        gw = start_gateway(fleet, folder, env, workers=both_workers(fleet))
        with client(gw) as c:
            final = c.jobs.wait(job.id)
            assert final.state == jpb.JOB_STATE_SUCCEEDED, final.error
            assert final.runs == 2 and final.pieces_total == final.pieces_done >= 7
            result = c.jobs.result(job.id).result
        decoded = decoded_seconds(fleet) - before
        # Nothing finished was decoded again: at most the pieces that were on the workers when it died.
        in_flight = 4 * 30.0  # JOB_WORKER_SLOTS=1 on two workers, lookahead: at most ~2-4 pieces of 30 s
        assert 0.8 * audio_s <= decoded <= audio_s + in_flight, (decoded, done_before)
        assert abs(result.audio_duration.ToNanoseconds() / 1e9 - audio_s) < 0.1
        starts = [s.start_offset.ToNanoseconds() for s in result.segments]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert result.transcript.lower().count("weather") >= 4  # the 50 s block of clips, nearly five times
        lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
        resumed = [e for e in lines if e.get("event") == "job_claimed" and e.get("job_id") == job.id]
        assert resumed and resumed[0]["run"] == 2
    finally:
        gw.stop()
