"""`status`: the fleet's workers and models as a table, and the gateway's totals (pure functions of ListWorkers)."""

from __future__ import annotations

import time

from scribe_client.gen import fleet_pb2, worker_pb2


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def health_age(w: fleet_pb2.Worker, now_s: float) -> str:
    """How old the worker's health report is; "stale" when the gateway no longer counts it as current."""
    if not w.HasField("health"):
        return "-"
    age = max(0.0, now_s - w.health_updated_time.ToNanoseconds() / 1e9)
    return f"stale {age:.0f}s" if w.health_stale else f"{age:.1f}s"


def status_rows(workers: list[fleet_pb2.Worker], now_s: float | None = None) -> list[list[str]]:
    """One row per worker for `status`. A stale health report gives no figures: they would read as live."""
    now_s = time.time() if now_s is None else now_s
    rows = [
        [
            "WORKER",
            "SUPERVISOR",
            "ROUTING",
            "HEALTH AGE",
            "MODEL",
            "DEVICE",
            "ENGINE",
            "VRAM MiB used/total",
            "RSS MiB",
            "ACTIVE",
            "STREAMS",
            "DONE",
            "WIN QUEUED",
            "WIN/S",
            "BATCHES size x count",
            "HOST",
            "FOUND BY",
        ]
    ]
    for w in workers:
        h = w.health
        known = w.HasField("health")
        has = known and not w.health_stale  # the figures of the process now running
        if known and h.device_kind == worker_pb2.DEVICE_KIND_CUDA:
            device = f"cuda:{h.device_index} {h.gpu_name}".strip()
        else:
            device = "cpu" if known else "-"
        vram = (
            f"{_mib(h.vram_process_bytes if h.HasField('vram_process_bytes') else h.vram_used_bytes)}/{_mib(h.vram_total_bytes)}"
            if has and h.HasField("vram_total_bytes")
            else "-"
        )
        routing = fleet_pb2.RoutingState.Name(w.routing_state).removeprefix("ROUTING_STATE_")
        rows.append(
            [
                w.name,
                fleet_pb2.SupervisorState.Name(w.supervisor_state).removeprefix("SUPERVISOR_STATE_"),
                routing,
                health_age(w, now_s),
                model_cell(w),
                device,
                h.engine.split(" (")[0] if known and h.engine else "-",
                vram,
                _mib(h.process_rss_bytes) if has else "-",
                str(h.active_requests) if has else "-",
                str(h.active_streams) if has else "-",
                str(h.requests_completed) if has else "-",
                str(h.batch.windows_queued) if has else "-",
                f"{h.batch.windows_per_second:.1f}" if has else "-",
                batch_histogram(list(h.batch.batches_by_size)) if has else "-",
                w.host or "local",
                w.source or "-",
            ]
        )
    return rows


def model_cell(w: fleet_pb2.Worker) -> str:
    """The worker's model, and "(unloaded)" while it has given its memory back (WORKER_IDLE_UNLOAD_S)."""
    name = w.model or "-"
    if w.HasField("health") and not w.health_stale:
        if w.health.model_state == worker_pb2.MODEL_STATE_UNLOADED:
            return f"{name} (unloaded)"
        if w.health.model_state == worker_pb2.MODEL_STATE_LOADING:
            return f"{name} (loading)"
    return name


def models_line(models: list[fleet_pb2.FleetModel]) -> str:
    """One line for the models: "models tiny.en (default) 2/2 serving, base 1/1 serving, 0 loaded"."""
    parts = []
    for m in models:
        unloaded = m.serving_workers - m.loaded_workers
        extra = f", {unloaded} unloaded" if unloaded else ""
        queued = f", {m.queued_requests} queued" if m.queued_requests else ""
        parts.append(
            f"{m.name}{' (default)' if m.is_default else ''} {m.serving_workers}/{m.workers} serving{extra}{queued}"
        )
    return "models " + "; ".join(parts)


def batch_histogram(by_size: list[int]) -> str:
    """Batches by size, e.g. "1x3 8x12": 3 batches of one window, 12 of eight."""
    return " ".join(f"{size}x{count}" for size, count in enumerate(by_size, start=1) if count) or "-"


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def stats_line(stats: fleet_pb2.FleetStats) -> str:
    line = (
        f"queue {stats.queued_requests}/{stats.queue_size}  streams {stats.active_streams}  "
        f"requests {stats.requests_ok} ok, {stats.requests_failed} failed  "
        f"audio {stats.audio_seconds:.1f} s  realtime factor (last minute) {stats.realtime_factor:.2f}"
    )
    return line + jobs_line(stats.jobs) if stats.HasField("jobs") else line


def jobs_line(j: fleet_pb2.JobStats) -> str:
    """Batch jobs on a line of their own: by state, the oldest queued one's wait, throughput, spool use."""
    age = j.oldest_queued_age.ToNanoseconds() / 1e9
    spool = f"{j.spool_bytes / 1e9:.2f}" + (f"/{j.spool_limit_bytes / 1e9:.0f} GB" if j.spool_limit_bytes else " GB")
    return (
        f"\njobs {j.queued} queued (oldest {age:.0f} s), {j.running} running, {j.succeeded} succeeded, "
        f"{j.failed} failed, {j.cancelled} cancelled  {j.finished_per_second:.2f} jobs/s  spool {spool}"
    )


def print_status(listed: fleet_pb2.ListWorkersResponse) -> None:
    print(format_table(status_rows(list(listed.workers))))
    if listed.models:
        print(models_line(list(listed.models)))
    print(stats_line(listed.stats))
