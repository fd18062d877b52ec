"""Prometheus metrics of the gateway, and the same figures for `ListWorkers` / `scribe status`.

Per-request figures are counted when each RPC ends; fleet gauges (queue depth, per-worker load and
memory) are read from the registry at scrape time. A worker whose last health report is stale (see
services.gateway.routing.registry) shows serving 0 and health_stale 1, and none of that report's figures: a
stopped or killed worker's last load and memory would read as current.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.common.rpclog import RequestLine
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry
from services.gen import fleet_pb2

WINDOW_S = 60.0


class FleetCollector(Collector):
    def __init__(self, registry: Registry, dispatcher: Dispatcher, stats: GatewayStats) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._stats = stats

    def _models(self) -> Iterator[GaugeMetricFamily]:
        """Per model: its queue and its workers (every worker figure below also carries a `model` label)."""
        queued = GaugeMetricFamily(
            "scribe_model_queue_depth", "Calls for the model waiting for a free slot", labels=["model"]
        )
        workers = GaugeMetricFamily("scribe_model_workers", "Workers of the model the gateway knows", labels=["model"])
        serving = GaugeMetricFamily(
            "scribe_model_workers_serving", "Workers of the model taking work", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            "scribe_model_workers_loaded", "Serving workers of the model with it in memory", labels=["model"]
        )
        for m in self._stats.models_pb():
            queued.add_metric([m.name], m.queued_requests)
            workers.add_metric([m.name], m.workers)
            serving.add_metric([m.name], m.serving_workers)
            loaded.add_metric([m.name], m.loaded_workers)
        yield from (queued, workers, serving, loaded)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        yield GaugeMetricFamily(
            "scribe_queue_depth", "Calls waiting for a free worker slot", value=self._dispatcher.waiting
        )
        yield GaugeMetricFamily(
            "scribe_active_streams", "Streams open on the gateway", value=self._stats.active_streams
        )
        yield GaugeMetricFamily(
            "scribe_realtime_factor",
            "Audio seconds per second over the last minute",
            value=self._stats.realtime_factor(),
        )
        serving = GaugeMetricFamily(
            "scribe_worker_serving", "1 when the gateway routes to the worker", labels=["worker", "model"]
        )
        active = GaugeMetricFamily(
            "scribe_worker_active_requests", "Requests the worker is transcribing", labels=["worker", "model"]
        )
        in_flight = GaugeMetricFamily(
            "scribe_worker_in_flight", "Calls the gateway has on the worker", labels=["worker", "model"]
        )
        streams = GaugeMetricFamily("scribe_worker_streams", "Streams pinned to the worker", labels=["worker", "model"])
        vram = GaugeMetricFamily(
            "scribe_worker_vram_used_bytes", "Device memory used by the worker process", labels=["worker", "model"]
        )
        vram_total = GaugeMetricFamily(
            "scribe_worker_vram_total_bytes", "Memory of the worker's device", labels=["worker", "model"]
        )
        rss = GaugeMetricFamily(
            "scribe_worker_rss_bytes", "Resident memory of the worker process", labels=["worker", "model"]
        )
        stale = GaugeMetricFamily(
            "scribe_worker_health_stale",
            "1 when the worker's last health report no longer counts (process gone, restarted or silent)",
            labels=["worker", "model"],
        )
        for w in self._registry.sorted():
            serving.add_metric([w.name, w.model], 1.0 if w.serving else 0.0)
            in_flight.add_metric([w.name, w.model], w.in_flight)
            streams.add_metric([w.name, w.model], w.streams)
            is_stale = w.health is not None and bool(w.health_staleness())
            stale.add_metric([w.name, w.model], 1.0 if is_stale else 0.0)
            if w.health is None or is_stale:
                continue
            active.add_metric([w.name, w.model], w.health.active_requests)
            rss.add_metric([w.name, w.model], w.health.process_rss_bytes)
            if w.health.HasField("vram_process_bytes"):
                vram.add_metric([w.name, w.model], w.health.vram_process_bytes)
            if w.health.HasField("vram_total_bytes"):
                vram_total.add_metric([w.name, w.model], w.health.vram_total_bytes)
        yield from (serving, stale, active, in_flight, streams, vram, vram_total, rss)
        yield from self._batches()
        yield from self._models()

    def _batches(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        """The workers' batch schedulers, as their last health report gave them."""
        sizes = HistogramMetricFamily(
            "scribe_worker_batch_size", "Windows per batch the worker decoded", labels=["worker", "model"]
        )
        queued = GaugeMetricFamily(
            "scribe_worker_windows_queued", "Windows waiting for a batch in the worker", labels=["worker", "model"]
        )
        rate = GaugeMetricFamily(
            "scribe_worker_windows_per_second",
            "Windows the worker decoded per second (last 30 s)",
            labels=["worker", "model"],
        )
        decoded = CounterMetricFamily("scribe_worker_windows", "Windows the worker decoded", labels=["worker", "model"])
        wait = CounterMetricFamily(
            "scribe_worker_batch_queue_wait_seconds",
            "Seconds decoded windows waited for their batch, summed",
            labels=["worker", "model"],
        )
        mixed = CounterMetricFamily(
            "scribe_worker_mixed_batches", "Batches holding windows of more than one call", labels=["worker", "model"]
        )
        phases = CounterMetricFamily(
            "scribe_worker_engine_seconds", "Seconds the engine spent, by phase", labels=["worker", "model", "phase"]
        )
        final_wait = CounterMetricFamily(
            "scribe_worker_stream_final_wait_seconds",
            "Seconds live-stream windows that may become final waited before their batch, summed",
            labels=["worker", "model"],
        )
        for w in self._registry.sorted():
            if w.health is None or not w.health.HasField("batch") or w.health_staleness():
                continue
            batch = w.health.batch
            sizes.add_metric([w.name, w.model], size_buckets(list(batch.batches_by_size)), float(batch.windows_decoded))
            queued.add_metric([w.name, w.model], batch.windows_queued)
            rate.add_metric([w.name, w.model], batch.windows_per_second)
            decoded.add_metric([w.name, w.model], batch.windows_decoded)
            wait.add_metric([w.name, w.model], batch.queue_wait_seconds_total)
            mixed.add_metric([w.name, w.model], batch.mixed_batches)
            for phase, seconds in (
                ("encode", batch.encode_seconds_total),
                ("decode", batch.decode_seconds_total),
                ("align", batch.align_seconds_total),
            ):
                phases.add_metric([w.name, w.model, phase], seconds)
            final_wait.add_metric([w.name, w.model], batch.final_wait_seconds_total)
        yield from (sizes, queued, rate, decoded, wait, mixed, phases, final_wait)
        yield from self._speakers()

    def _speakers(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        """The workers' speaker-embedding schedulers (speaker labels), as their last health report gave them."""
        seconds = CounterMetricFamily(
            "scribe_worker_speaker_audio_seconds",
            "Seconds of speech the worker turned into voice embeddings for speaker labels",
            labels=["worker"],
        )
        windows = CounterMetricFamily(
            "scribe_worker_speaker_windows", "Stretches of speech the worker embedded", labels=["worker"]
        )
        busy = CounterMetricFamily(
            "scribe_worker_speaker_busy_seconds",
            "Seconds the worker spent running its speaker model",
            labels=["worker"],
        )
        memory = GaugeMetricFamily(
            "scribe_worker_speaker_model_bytes", "Memory the worker's speaker model takes", labels=["worker"]
        )
        for w in self._registry.sorted():
            if w.health is None or not w.health.speaker_model or w.health_staleness():
                continue
            stats = w.health.speakers
            seconds.add_metric([w.name], stats.audio_seconds_embedded)
            windows.add_metric([w.name], stats.windows_embedded)
            busy.add_metric([w.name], stats.busy_seconds_total)
            memory.add_metric([w.name], w.health.speaker_model_bytes)
        yield from (seconds, windows, busy, memory)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def size_buckets(by_size: list[int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from counts of batches of 1, 2, 3, ... windows."""
    buckets = [(str(le), float(sum(by_size[:le]))) for le in BATCH_BUCKETS]
    return [*buckets, ("+Inf", float(sum(by_size)))]


class GatewayStats:
    """Counts every finished RPC into Prometheus and keeps the totals `scribe status` shows."""

    def __init__(self, registry: Registry, dispatcher: Dispatcher, models: FleetModels | None = None) -> None:
        self.prometheus = CollectorRegistry()
        self._registry = registry
        self._dispatcher = dispatcher
        self._models = models
        self.requests = Counter(
            "scribe_requests", "RPCs by method and status code", ["method", "code"], registry=self.prometheus
        )
        self.audio = Counter(
            "scribe_audio_seconds", "Seconds of audio transcribed", ["method"], registry=self.prometheus
        )
        self.rtfx = Histogram(
            "scribe_request_realtime_factor",
            "Audio seconds per wall-clock second of each Transcribe call",
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.prometheus,
        )
        self.duration = Histogram(
            "scribe_request_duration_seconds",
            "Wall-clock time of each RPC, queueing included, by method",
            ["method"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=self.prometheus,
        )
        self.stream_moves = Counter(
            "scribe_stream_moves",
            "Streams moved to another worker, by the status their worker's call ended with",
            ["code"],
            registry=self.prometheus,
        )
        self.prometheus.register(FleetCollector(registry, dispatcher, self))
        self.active_streams = 0
        self.ok = 0
        self.failed = 0
        self.audio_seconds = 0.0
        self._recent: deque[tuple[float, float]] = deque()
        self.jobs: Callable[[], fleet_pb2.JobStats] | None = None  # the job service's figures, once it is up

    def observe(self, line: RequestLine, duration_s: float) -> None:
        self.requests.labels(line.method, line.code.name).inc()
        if line.method != "StreamingTranscribe":  # a stream lasts as long as its audio: not a latency
            self.duration.labels(line.method).observe(duration_s)
        if line.code.name == "OK":
            self.ok += 1
        else:
            self.failed += 1
        audio_s = float(line.fields.get("audio_s") or 0.0)
        if audio_s > 0:
            self.audio.labels(line.method).inc(audio_s)
            self.audio_seconds += audio_s
            self._recent.append((time.monotonic(), audio_s))
            if line.method == "Transcribe" and duration_s > 0:
                self.rtfx.observe(audio_s / duration_s)

    def realtime_factor(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(a for _, a in self._recent) / WINDOW_S

    def to_pb(self) -> fleet_pb2.FleetStats:
        return fleet_pb2.FleetStats(
            queued_requests=self._dispatcher.waiting,
            queue_size=self._dispatcher.queue_size,
            active_streams=self.active_streams,
            requests_ok=self.ok,
            requests_failed=self.failed,
            audio_seconds=self.audio_seconds,
            realtime_factor=self.realtime_factor(),
            jobs=self.jobs() if self.jobs is not None else None,
        )

    def models_pb(self) -> list[fleet_pb2.FleetModel]:
        """Every model served (the default first) and its workers, for ListWorkers and the metrics."""
        if self._models is not None:
            names, default = self._models.names(), self._models.default
        else:
            names = sorted({w.model for w in self._registry.workers.values()})
            default = names[0] if names else ""
        out = []
        for name in names:
            workers = self._registry.of(name)
            out.append(
                fleet_pb2.FleetModel(
                    name=name,
                    is_default=name == default,
                    workers=len(workers),
                    serving_workers=sum(1 for w in workers if w.serving),
                    loaded_workers=sum(1 for w in workers if w.serving and w.loaded),
                    queued_requests=self._dispatcher.queued[name],
                )
            )
        return out

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host, registry=self.prometheus)
