"""The pure parts of batch jobs: the deny list, fair slots, page tokens, label and spec checks, webhook
payloads and backoff, and the store's claims on a real SQLite file (no fleet)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path

import grpc
import pytest

from services.common.config import Settings
from services.common.errors import RequestError
from services.gateway.jobs import netguard, requests
from services.gateway.jobs.fairness import FairSlots
from services.gateway.jobs.model import (
    QUEUED,
    SUCCEEDED,
    JobRecord,
    PieceRecord,
    new_job_id,
    page_token,
    parse_page_token,
)
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.webhooks import payload, retry_delay
from services.gen import jobs_pb2 as jpb
from services.gen import transcription_pb2 as pb

pytestmark = pytest.mark.fast


def test_the_deny_list_refuses_everything_but_global_unicast_unless_allowed() -> None:
    allowed = netguard.allowed_networks(["10.20.0.0/16"])
    denied = [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
    ]
    for text in denied:
        assert netguard.is_denied(ipaddress.ip_address(text), allowed), text
    for text in ("8.8.8.8", "2606:4700::1111", "10.20.3.4"):
        assert not netguard.is_denied(ipaddress.ip_address(text), allowed), text
    with pytest.raises(RequestError) as bad:
        netguard.parse_url("http://user:pw@example.com/", "webhook.url")
    assert bad.value.reason == "BAD_URL"
    url, headers, extensions = netguard.pinned(
        netguard.parse_url("https://hooks.example.com/x?y=1", "u"), "93.184.216.34"
    )
    assert url == "https://93.184.216.34:443/x?y=1" and headers == {"Host": "hooks.example.com"}
    assert extensions == {"sni_hostname": "hooks.example.com"}


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    with pytest.raises(RequestError) as denied:
        asyncio.run(netguard.resolve(netguard.parse_url("http://localhost:8080/", "webhook.url"), [], "webhook.url"))
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED and denied.value.reason == "ADDRESS_DENIED"


def test_fair_slots_serve_clients_in_turn() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(lambda: 1)
        order: list[str] = []
        gate = asyncio.Event()

        async def piece(owner: str) -> None:
            async with slots.take(owner):
                order.append(owner)
                await gate.wait() if not order[1:] else None

        first = asyncio.create_task(piece("a"))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(piece(o)) for o in ["a", "a", "a", "b", "b"]]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *waiting)
        return order

    # A queued first, but once B waits too the slot alternates between them.
    assert asyncio.run(scenario()) == ["a", "a", "b", "a", "b", "a"]


def test_page_tokens_round_trip_and_foreign_ones_are_refused() -> None:
    token = page_token(1767225600.25, "job_abc")
    assert parse_page_token(token) == (1767225600.25, "job_abc") and parse_page_token("") is None
    for bad in ("x", "e30", "WzEsMl0"):  # garbage, "{}", "[1,2]"
        with pytest.raises(RequestError) as err:
            parse_page_token(bad)
        assert err.value.reason == "BAD_PAGE_TOKEN"


def test_spec_checks(tmp_path: Path) -> None:
    settings = Settings.from_env({"SCRIBE_ENV_FILE": str(tmp_path / "none"), "JOB_SOURCE_DIRS": str(tmp_path)})
    requests.check_labels({"project": "q3", "team/a.b-c_d": "x"})
    for labels in ({"": "x"}, {"-x": "y"}, {"k": "v" * 257}):
        with pytest.raises(RequestError):
            requests.check_labels(labels)
    inside = tmp_path / "a.wav"
    inside.write_bytes(b"RIFF")
    assert requests.source_path(str(inside), settings) == inside.resolve()
    (tmp_path / "link.wav").symlink_to("/etc/hostname")
    with pytest.raises(RequestError) as outside:  # a link out of the folder is judged by where it leads
        requests.source_path(str(tmp_path / "link.wav"), settings)
    assert outside.value.reason == "PATH_NOT_ALLOWED"
    with pytest.raises(RequestError) as secret:
        asyncio.run(requests.check_spec(jpb.JobSpec(webhook=jpb.Webhook(url="https://example.com/h")), settings))
    assert secret.value.reason == "WEBHOOK_SECRET_UNSET"
    with pytest.raises(RequestError) as beam:
        asyncio.run(requests.check_spec(jpb.JobSpec(options=pb.RecognitionOptions(beam_size=99)), settings))
    assert beam.value.reason == "BEAM_SIZE_TOO_LARGE"


def test_webhook_payload_and_backoff() -> None:
    now = time.time()
    spec = jpb.JobSpec(display_name="a.wav", labels={"p": "q"}, output_formats=[jpb.OUTPUT_FORMAT_TEXT])
    job = JobRecord(new_job_id(now), "o", "", SUCCEEDED, spec, now, now, finished_at=now, audio_s=3.0)
    result = pb.TranscribeResponse(segments=[pb.Segment(text=" Hello there.")], transcript="Hello there.")
    body = json.loads(payload(job, result.SerializeToString(), now))
    assert body["type"] == "job.succeeded" and body["data"]["outputs"] == {"txt": "Hello there.\n"}
    assert body["data"]["labels"] == {"p": "q"} and body["data"]["error"] is None
    delays = [retry_delay(n, 5.0) for n in range(1, 12)]
    assert 4.5 <= delays[0] <= 5.5 and 9 <= delays[1] <= 11 and max(delays) <= 3600 * 1.1


def test_claims_are_fair_single_and_conditional(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.create_schema()
    now = time.time()
    for i, owner in enumerate(["a"] * 5 + ["b"] * 2):
        store.create(JobRecord(new_job_id(now + i), owner, "", QUEUED, jpb.JobSpec(), now + i, now + i))
    claimed: list[JobRecord] = []
    while (job := store.claim("gw", 30, held=[j.id for j in claimed])) is not None:
        claimed.append(job)
    # The owner with fewer jobs running goes next: b's two are not left for last.
    assert [j.owner for j in claimed][:4] == ["a", "b", "a", "b"] and len(claimed) == 7
    first = claimed[0]
    assert store.piece_done(first.id, "gw", PieceRecord(0, 0.0, 1.0, b""), 1.0, 1)
    assert not store.piece_done(first.id, "other-gateway", PieceRecord(1, 1.0, 1.0, b""), 2.0, 2)
    assert [p.index for p in store.pieces(first.id)] == [0]
    # Another gateway takes a job only once its lease has run out; this gateway id takes it back at once.
    assert store.claim("other-gateway", 30, now=now) is None
    assert store.claim("gw", 30, held=[j.id for j in claimed[1:]]).id == first.id  # type: ignore[union-attr]
    later = store.claim("other-gateway", 30, now=time.time() + 60)
    assert later is not None and later.id == first.id and later.runs == 3
    assert store.cancel(first.id, None).state == jpb.JOB_STATE_CANCELLED  # type: ignore[union-attr]
    assert not store.finish(first.id, "gw", b"", 1.0, 1)  # a cancelled job takes no result
    store.close()


def test_a_clean_stop_gives_jobs_back_and_an_unstarted_claim_is_not_a_run(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.create_schema()
    now = time.time()
    for i in range(2):
        store.create(JobRecord(new_job_id(now + i), "o", "", QUEUED, jpb.JobSpec(), now + i, now + i))
    started = store.claim("gw", 30)
    waiting = store.claim("gw", 30, held=[started.id] if started else [])
    assert started is not None and waiting is not None
    assert store.release("gw", [started.id, waiting.id], unstarted=[waiting.id]) == 2
    after = {j.id: j for j in store.page("", [QUEUED])}
    assert after[started.id].runs == 1 and after[waiting.id].runs == 0
    assert store.release("someone-else", [started.id]) == 0  # only the holder gives a job back
    store.close()
