"""Worker count: resolve "auto", refuse what does not fit, and scale a running fleet live.

supervisord expands `numprocs=%(ENV_GPU_SCALE_WORKERS)s` once, when it starts, so a running fleet
cannot change numprocs. `scale` therefore works in two ways:
- down, or up to numprocs: it drains and stops the highest-numbered workers, or starts stopped ones;
- up past numprocs: it adds each extra worker as its own one-process group, from a copy of
  supervisord.conf's [program:gpu_worker] section written to run/scaled/, which supervisord.conf
  includes; `reloadConfig` + `addProcessGroup` start it without touching any other process.
`.env` gets the new GPU_SCALE_WORKERS, so the next `scribe start` has numprocs equal to it and
no extra groups (start clears run/scaled/).
"""

from __future__ import annotations

import configparser
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.common import capacity
from services.common.config import Settings
from services.gateway.routing.supervisor import SupervisorClient, worker_process_num

BASE_SECTION = "program:gpu_worker"


def scaled_dir(conf: Path) -> Path:
    return conf.resolve().parent / "run" / "scaled"


def extra_program(conf_text: str, num: int) -> str:
    """supervisord.conf's worker section, as a group of one holding worker `num`."""
    parser = configparser.RawConfigParser()
    parser.read_string(conf_text)
    section = dict(parser.items(BASE_SECTION))
    section.update(numprocs="1", numprocs_start=str(num), process_name="gpu_worker_%(process_num)02d")
    out = configparser.RawConfigParser()
    name = f"program:gpu_worker_{num:02d}"
    out.add_section(name)
    for key, value in section.items():
        out.set(name, key, value)
    buffer = io.StringIO()
    buffer.write("; written by `scribe scale`; removed by `scribe scale` down or the next `scribe start`\n")
    out.write(buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class ScalePlan:
    start: list[str]  # full names (group:process) of stopped workers to start
    add: list[int]  # process numbers to add as new groups
    stop: list[str]  # full names to drain and stop, highest first
    remove: list[int]  # extra groups to remove after they stopped


def plan(workers: dict[int, tuple[str, str]], target: int) -> ScalePlan:
    """`workers`: process number -> (group, state). Workers 0..target-1 run, the rest stop."""
    start, add, stop, remove = [], [], [], []
    for num in range(target):
        if num not in workers:
            add.append(num)
        elif workers[num][1] not in ("RUNNING", "STARTING", "BACKOFF"):
            start.append(f"{workers[num][0]}:gpu_worker_{num:02d}")
    for num in sorted(workers, reverse=True):
        if num >= target:
            group, state = workers[num]
            if state in ("RUNNING", "STARTING", "BACKOFF"):
                stop.append(f"{group}:gpu_worker_{num:02d}")
            if group != "gpu_worker":
                remove.append(num)
    return ScalePlan(start, add, stop, remove)


def budget_for(settings: Settings) -> capacity.Budget:
    if settings.whisper_device != "cpu":
        found = capacity.cuda_budget(str(settings.worker_device_id))
        if found is not None:
            return found
    return capacity.cpu_budget()


def per_worker_bytes(settings: Settings, budget: capacity.Budget) -> int:
    from services.gpu_worker.engines.choice import choose, torch_compute_type
    from services.gpu_worker.engines.faster_whisper_engine import resolve_compute_type, resolve_model

    if choose(settings) == "torch":
        compute = torch_compute_type(settings.whisper_compute_type, budget.kind)
        try:
            path: str | None = resolve_model(settings.whisper_model)[0]
        except ValueError:  # a transformers folder: its size is not known from a model.bin
            path = None
    else:
        path, _ = resolve_model(settings.whisper_model)
        compute = resolve_compute_type(settings.whisper_compute_type, budget.kind)
    speakers = settings.speaker_model != "off"
    on_device = speakers and budget.kind == "cuda" and _onnxruntime_has_cuda()
    return capacity.worker_bytes(
        budget.kind, compute, capacity.model_bytes(path), settings.worker_memory_mb, speakers, on_device
    )


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve_count(settings: Settings, requested: int, running: int = 0) -> int:
    """The worker count to run: `requested`, or as many as fit when it is 0 (auto). Raises CapacityError."""
    budget = budget_for(settings)
    per_worker = per_worker_bytes(settings, budget)
    if requested == 0:
        return max(1, capacity.fitting_workers(budget, per_worker, running, by_cores=True))
    return capacity.check_workers(requested, budget, per_worker, running)


def auto_reason(settings: Settings, count: int) -> str:
    """Why GPU_SCALE_WORKERS=auto came to `count`, for `scribe start` to say."""
    budget = budget_for(settings)
    per_worker = per_worker_bytes(settings, budget)
    mib = capacity.MIB
    cap = f", at most one a core ({budget.cores})" if budget.kind == "cpu" else ""
    return (
        f"GPU_SCALE_WORKERS=auto: {count} workers fit: {budget.free_bytes // mib} MiB free of "
        f"{budget.total_bytes // mib} on {budget.device}, {capacity.RESERVE_FRACTION:.0%} kept aside, about "
        f"{per_worker // mib} MiB a worker (WORKER_MEMORY_MB sets it){cap}"
    )


def scale(conf: Path, target: int) -> ScalePlan:
    client = SupervisorClient(f"unix://{conf.resolve().parent / 'run' / 'supervisor.sock'}")
    workers = {}
    for proc in client.processes():
        num = worker_process_num(proc.name)
        if num is not None:
            workers[num] = (proc.group, proc.state)
    steps = plan(workers, target)
    folder = scaled_dir(conf)
    if steps.add:
        folder.mkdir(parents=True, exist_ok=True)
        text = conf.read_text()
        for num in steps.add:
            (folder / f"gpu_worker_{num:02d}.conf").write_text(extra_program(text, num))
        client.reload_config()
        for num in steps.add:
            client.add_group(f"gpu_worker_{num:02d}")
    for name in steps.start:
        client.start(name, wait=False)
    # Workers drain in parallel: each finishes its calls, hands its streams back, then exits.
    with ThreadPoolExecutor(max(1, len(steps.stop))) as pool:
        list(pool.map(lambda name: client.stop(name, wait=True), steps.stop))
    for num in steps.remove:
        client.remove_group(f"gpu_worker_{num:02d}")
        (folder / f"gpu_worker_{num:02d}.conf").unlink(missing_ok=True)
    if steps.remove:
        client.reload_config()
    return steps
