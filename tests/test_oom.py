"""A worker the kernel's OOM killer kills mid-call: supervisord restarts it and the call is served elsewhere.

The kill comes from the kernel, not the test: just before two calls arrive, one worker is moved into a
memory cgroup of its own that allows it 256 KiB of new pages; the pages its call faults in push the
cgroup over and the kernel's memcg OOM killer sends the SIGKILL (the cgroup's `oom_kill` count and the
kernel log say so). This machine mounts
cgroup v2 without the memory controller (only hugetlb is in /sys/fs/cgroup/unified/cgroup.controllers),
so the v1 memory hierarchy is used where it is there, and v2's `memory.max` where it is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.gen import transcription_pb2 as pb
from tests.conftest import Fleet
from tests.helpers import speech_recording, words_of

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")
#: Room for new pages once the worker is in: more than it faults in idle for a moment, far less than a call.
HEADROOM = 256 * 2**10


class MemoryCgroup:
    """A memory cgroup (v1 or v2) holding one process, with a limit."""

    def __init__(self, path: Path, v1: bool) -> None:
        self.path, self.v1 = path, v1

    @classmethod
    def create(cls, name: str) -> MemoryCgroup:
        if (V1 / "cgroup.procs").exists():
            parent = V1 / _own_path("memory").lstrip("/")
            cgroup = cls(parent / name, v1=True)
        elif (V2 / "cgroup.controllers").exists() and "memory" in (V2 / "cgroup.controllers").read_text().split():
            cgroup = cls(V2 / _own_path("").lstrip("/") / name, v1=False)
        else:
            pytest.fail("no memory cgroup controller is mounted (neither cgroup v1 memory nor v2 with memory)")
        cgroup.path.mkdir()
        return cgroup

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def hold(self, pid: int) -> None:
        """Move `pid` in and cap the cgroup just above what it holds. Its pages stay charged where they
        were (this kernel refuses memory.move_charge_at_immigrate), so the limit is on the pages it
        faults in from now on."""
        self._write("cgroup.procs", str(pid))
        usage = int((self.path / ("memory.usage_in_bytes" if self.v1 else "memory.current")).read_text())
        self._write("memory.limit_in_bytes" if self.v1 else "memory.max", str(usage + HEADROOM))

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.v1 else "memory.events"
        counts = dict(line.split() for line in (self.path / name).read_text().splitlines())
        return int(counts.get("oom_kill", 0))

    def remove(self) -> None:
        """Hand back a process still inside (the test failed) to the parent cgroup, then remove this one."""
        for pid in (self.path / "cgroup.procs").read_text().split():
            (self.path.parent / "cgroup.procs").write_text(pid)
        self.path.rmdir()


def _own_path(controller: str) -> str:
    """This process's cgroup path in the hierarchy of `controller` ("" for cgroup v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == controller:
            return path
    return "/"


@pytest.fixture
def cgroup(fleet: Fleet) -> Iterator[MemoryCgroup]:
    try:
        made = MemoryCgroup.create(f"scribe-oom-{os.getpid()}")
    except PermissionError as exc:
        pytest.fail(f"cannot create a memory cgroup (root needed): {exc}")
    yield made
    made.remove()


def test_oom_killed_worker_restarts_and_its_call_is_served_elsewhere(
    serving_fleet: Fleet, cgroup: MemoryCgroup
) -> None:
    audio = speech_recording(17)  # under SHARD_MIN_SECONDS: one worker decodes it whole
    request = pb.TranscribeRequest(audio_content=audio)
    reference = serving_fleet.transcription.Transcribe(request, timeout=120)
    before = {name: w.supervisor_pid for name, w in serving_fleet.workers().items()}
    victim = "gpu_worker_00"
    answers: dict[str, pb.TranscribeResponse | grpc.RpcError] = {}

    def call(request_id: str) -> None:
        try:
            answers[request_id] = serving_fleet.transcription.Transcribe(
                request, timeout=120, metadata=(("x-request-id", request_id),)
            )
        except grpc.RpcError as err:
            answers[request_id] = err

    # Two calls at once on two idle workers: one of them lands on the worker that has no memory left.
    cgroup.hold(before[victim])
    threads = [threading.Thread(target=call, args=(f"oom-test-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert cgroup.oom_kills() == 1, "the kernel's OOM killer did not kill the worker"
        for answer in answers.values():
            assert isinstance(answer, pb.TranscribeResponse), answer
            assert answer.worker_id != victim
            assert words_of(answer.transcript) == words_of(reference.transcript)
        retried = [
            line
            for line in (serving_fleet.run_dir / "logs" / "gateway.log").read_text().splitlines()
            if "worker_unavailable_retrying" in line and f'"worker": "{victim}"' in line and "oom-test-" in line
        ]
        assert len(retried) == 1, "the call in flight on the killed worker was not retried elsewhere"
        log = (serving_fleet.run_dir / "logs" / "supervisord.log").read_text()
        assert f"exited: {victim} (terminated by SIGKILL" in log
        serving_fleet.wait_all_serving(timeout=90)  # supervisord restarted it
        assert serving_fleet.workers()[victim].supervisor_pid != before[victim]
    finally:
        serving_fleet.wait_all_serving(timeout=90)
