"""The workers the gateway knows, their states, and the choice of one for each call.

A worker's health report is the state of one process at one moment. It stops counting (it is stale)
when supervisord says the process is not running or is another process, when the worker failed its
last health check or a call, or when no report came for STALE_AFTER_POLLS polls. A stale report never
makes a worker SERVING: not for routing, not in ListWorkers, `scribe status` or the metrics, which all
read `routing` and `health_staleness` here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from scribe_client.credentials import aio_token_interceptors

from services.gen import fleet_pb2, transcription_pb2_grpc, worker_pb2, worker_pb2_grpc

SUPERVISOR_STATES = {
    "STOPPED": fleet_pb2.SUPERVISOR_STATE_STOPPED,
    "STARTING": fleet_pb2.SUPERVISOR_STATE_STARTING,
    "RUNNING": fleet_pb2.SUPERVISOR_STATE_RUNNING,
    "BACKOFF": fleet_pb2.SUPERVISOR_STATE_BACKOFF,
    "STOPPING": fleet_pb2.SUPERVISOR_STATE_STOPPING,
    "EXITED": fleet_pb2.SUPERVISOR_STATE_EXITED,
    "FATAL": fleet_pb2.SUPERVISOR_STATE_FATAL,
    "UNKNOWN": fleet_pb2.SUPERVISOR_STATE_UNKNOWN,
}
UNSUPERVISED = "UNSUPERVISED"
#: Health polls a worker may go without a report before its last one is stale.
STALE_AFTER_POLLS = 3


def health_check_timeout(interval_s: float) -> float:
    """How long one GetWorkerHealth may take before the worker counts as not answering."""
    return max(1.0, 2 * interval_s)


def stale_after(interval_s: float) -> float:
    """Age at which a health report is stale: a few polls, each allowed its interval and its check's timeout,
    so a slow answer or a busy gateway never makes a live worker look gone."""
    return STALE_AFTER_POLLS * (interval_s + health_check_timeout(interval_s))


@dataclass
class WorkerHandle:
    """One worker: where it is, what supervisord and its health RPC last said, what we have in flight."""

    name: str
    address: str
    channel_options: list[tuple[str, int | str]]
    supervisor_state: str = UNSUPERVISED
    supervisor_pid: int = 0
    health: worker_pb2.WorkerHealth | None = None
    health_time: float = 0.0
    health_pid: int = 0  # supervisor_pid when `health` was read: a restart makes the report another process's
    health_error: str = ""
    stale_after_s: float = stale_after(0.5)
    in_flight: int = 0
    streams: int = 0
    host: str = ""  # the machine it runs on: "" for this one (unix socket), else the address's host
    source: str = "supervisord"  # what found it: supervisord, STATIC_WORKERS, or the dns: entry
    retired: str = ""  # why it is being drained out of the fleet (gone from DNS); "" while it belongs
    retiring: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set with `retired`
    group_model: str = ""  # the model its supervisord group stands for, until its health names one
    token: str | None = field(default=None, repr=False)
    tcp_credentials: grpc.ChannelCredentials | None = field(default=None, repr=False)
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            # A worker on TCP checks the token like the gateway does; one on a unix socket is guarded by
            # its folder's mode, so its calls skip the interceptors' per-message cost.
            tcp = not self.address.startswith("unix:")
            interceptors = aio_token_interceptors(self.token) if tcp else None
            if tcp and self.tcp_credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.address, self.tcp_credentials, options=self.channel_options, interceptors=interceptors
                )
            else:
                self._channel = grpc.aio.insecure_channel(
                    self.address, options=self.channel_options, interceptors=interceptors
                )
        return self._channel

    @property
    def transcription(self) -> transcription_pb2_grpc.TranscriptionServiceStub:
        return transcription_pb2_grpc.TranscriptionServiceStub(self.channel)

    @property
    def worker(self) -> worker_pb2_grpc.WorkerServiceStub:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def retire(self, reason: str) -> None:
        """Take no new work; streams move elsewhere (the relays wait on `retiring`), calls in flight end here."""
        self.retired = reason
        self.retiring.set()

    def rejoin(self) -> None:
        self.retired = ""
        self.retiring = asyncio.Event()

    @property
    def model(self) -> str:
        """The model it serves: as its (latest, even stale) health report says, else as its group's name says."""
        if self.health is not None and self.health.model_name:
            return self.health.model_name
        return self.group_model

    @property
    def loaded(self) -> bool:
        """Its model is in memory (not given back after WORKER_IDLE_UNLOAD_S, and not loading again)."""
        return self.health is None or self.health.model_state in (
            worker_pb2.MODEL_STATE_UNSPECIFIED,
            worker_pb2.MODEL_STATE_LOADED,
        )

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.streams == 0

    @property
    def routing(self) -> tuple[fleet_pb2.RoutingState, str]:
        """(RoutingState, reason) from the supervisor state and the latest health answer."""
        if self.retired:
            return fleet_pb2.ROUTING_STATE_NOT_SERVING, f"draining: {self.retired}"
        if self.supervisor_state not in ("RUNNING", UNSUPERVISED):
            return fleet_pb2.ROUTING_STATE_UNREACHABLE, f"supervisor state {self.supervisor_state}"
        if self.health_error:
            return fleet_pb2.ROUTING_STATE_UNREACHABLE, self.health_error
        if self.health is None:
            return fleet_pb2.ROUTING_STATE_UNREACHABLE, "no health answer yet"
        stale = self.health_staleness()
        if stale:
            return fleet_pb2.ROUTING_STATE_UNREACHABLE, stale
        if self.health.status != worker_pb2.WORKER_STATUS_SERVING:
            status = worker_pb2.WorkerStatus.Name(self.health.status)
            reason = f"{status}: {self.health.status_reason}" if self.health.status_reason else status
            return fleet_pb2.ROUTING_STATE_NOT_SERVING, reason
        return fleet_pb2.ROUTING_STATE_SERVING, ""

    def health_staleness(self) -> str:
        """Why the last health report is not the worker's state now; "" while it is (or there is none)."""
        if self.health is None:
            return ""
        if self.supervisor_state not in ("RUNNING", UNSUPERVISED):
            return f"supervisor state {self.supervisor_state}"
        if self.supervisor_pid != self.health_pid:
            return f"health report is from pid {self.health_pid}, the process now is pid {self.supervisor_pid}"
        if self.health_error:
            return self.health_error
        age = now() - self.health_time
        if age > self.stale_after_s:
            return f"no health report for {age:.1f} s"
        return ""

    def record_health(self, health: worker_pb2.WorkerHealth) -> None:
        self.health, self.health_time, self.health_pid, self.health_error = health, now(), self.supervisor_pid, ""

    @property
    def serving(self) -> bool:
        return self.routing[0] == fleet_pb2.ROUTING_STATE_SERVING

    def mark_unreachable(self, reason: str) -> None:
        """A call failed with UNAVAILABLE: stop routing here until the next health answer."""
        self.health_error = reason

    @property
    def capacity(self) -> int:
        """Calls the worker runs at once (its WORKER_CONCURRENCY, as its health reports)."""
        return max(1, self.health.max_concurrent_requests) if self.health else 1

    @contextmanager
    def track_stream(self) -> Iterator[None]:
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    def load(self) -> tuple[int, int]:
        """What least-loaded routing compares: our calls and streams on it, then the worker's own count."""
        reported = self.health.active_requests + self.health.queued_requests if self.health else 0
        return self.in_flight + self.streams, reported

    def to_pb(self) -> fleet_pb2.Worker:
        state, reason = self.routing
        msg = fleet_pb2.Worker(
            name=self.name,
            address=self.address,
            supervisor_state=SUPERVISOR_STATES.get(self.supervisor_state, fleet_pb2.SUPERVISOR_STATE_UNSUPERVISED),
            routing_state=state,
            routing_reason=reason,
            in_flight=self.in_flight,
            streams=self.streams,
            supervisor_pid=self.supervisor_pid,
            host=self.host,
            source=self.source,
            model=self.model,
        )
        if self.health is not None:
            msg.health.CopyFrom(self.health)
            msg.health_updated_time.FromNanoseconds(int(self.health_time * 1e9))
            stale = self.health_staleness()
            if stale:
                # A reader of the last report would see SERVING beside routing UNREACHABLE: the status is
                # not known now, and the reason keeps what it was.
                msg.health_stale = True
                last = worker_pb2.WorkerStatus.Name(self.health.status)
                msg.health.status = worker_pb2.WORKER_STATUS_UNSPECIFIED
                msg.health.status_reason = f"stale ({stale}); last reported {last}"
        return msg


def choose_least_loaded(workers: Iterable[WorkerHandle], turn: int) -> WorkerHandle | None:
    """The serving worker with the least load, one with its model in memory before one that would load it
    first; ties go round-robin by `turn`."""
    serving = sorted((w for w in workers if w.serving), key=lambda w: w.name)
    if not serving:
        return None
    best = min((not w.loaded, w.load()) for w in serving)
    tied = [w for w in serving if (not w.loaded, w.load()) == best]
    return tied[turn % len(tied)]


class Registry:
    """All known workers by name."""

    def __init__(
        self,
        channel_options: list[tuple[str, int | str]],
        worker_token: str | None = None,
        tcp_credentials: grpc.ChannelCredentials | None = None,
        health_interval_s: float = 0.5,
    ) -> None:
        self.workers: dict[str, WorkerHandle] = {}
        self._stale_after_s = stale_after(health_interval_s)
        self._options = channel_options
        self._token = worker_token
        self._tcp_credentials = tcp_credentials
        self._turns = itertools.count()

    def ensure(self, name: str, address: str, host: str = "", source: str = "supervisord") -> WorkerHandle:
        handle = self.workers.get(name)
        if handle is None or handle.address != address:
            handle = WorkerHandle(
                name=name,
                address=address,
                channel_options=self._options,
                token=self._token,
                tcp_credentials=self._tcp_credentials,
                stale_after_s=self._stale_after_s,
                host=host,
                source=source,
            )
            self.workers[name] = handle
        return handle

    async def remove(self, name: str) -> None:
        handle = self.workers.pop(name, None)
        if handle is not None:
            await handle.close()

    def of(self, model: str | None) -> list[WorkerHandle]:
        """The workers of `model` (all of them for None), by name."""
        return sorted((w for w in self.workers.values() if model is None or w.model == model), key=lambda w: w.name)

    def pick(self, model: str | None = None, exclude: Iterable[str] = ()) -> WorkerHandle | None:
        skip = set(exclude)
        return choose_least_loaded((w for w in self.of(model) if w.name not in skip), next(self._turns))

    def serving_count(self, model: str | None = None) -> int:
        return sum(1 for w in self.of(model) if w.serving)

    def summary(self, model: str | None = None) -> str:
        """Why nothing is serving, for the UNAVAILABLE message."""
        workers = self.of(model)
        if not workers:
            return "no workers are configured or discovered" if model is None else f"model {model} has no workers"
        return "; ".join(f"{w.name}: {w.routing[1] or 'serving'}" for w in workers)

    def sorted(self) -> list[WorkerHandle]:
        return sorted(self.workers.values(), key=lambda w: w.name)


def now() -> float:
    return time.time()
