"""Worker count: resolve "auto", refuse what does not fit, and scale a running fleet live.

supervisord expands `numprocs=%(ENV_GPU_SCALE_WORKERS)s` once, when it starts, so a running fleet
cannot change numprocs. `scale` therefore works in two ways:
- down, or up to numprocs: it drains and stops the highest-numbered workers, or starts stopped ones;
- up past numprocs: it adds each extra worker as its own one-process group, from a copy of
  supervisord.conf's [program:gpu_worker] section written to run/scaled/, which supervisord.conf
  includes; `reloadConfig` + `addProcessGroup` start it without touching any other process.
`.env` gets the new GPU_SCALE_WORKERS, so the next `scribe start` has numprocs equal to it and
no extra groups (start clears run/scaled/).

With several models (WORKER_MODELS, services/cli/groups.py) `scribe scale MODEL=N` does the same inside
that model's workers: its highest-numbered workers drain and stop, stopped ones start, and new ones are
one-process groups `gpu_worker_SLUG_NN` on the lowest free numbers. A model scaled to 0 has its groups
removed (requests for it fail at once with MODEL_NOT_SERVING instead of waiting), and scaling it up again
writes its group anew. `.env` gets the new WORKER_MODELS.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.cli.groups import free_numbers, model_workers, program_section, reserved_numbers, scaled_dir
from services.common import capacity
from services.common.config import ConfigError, Settings
from services.common.models.catalogue import lookup, served_name, slug
from services.gateway.routing.supervisor import SupervisorClient, group_model_slug, model_group, worker_process_num

RUNNING = ("RUNNING", "STARTING", "BACKOFF")


def extra_program(conf_text: str, num: int, group: str = "gpu_worker", model: str | None = None) -> str:
    """supervisord.conf's worker section, as a group of one (`GROUP_NN`) holding worker `num`."""
    return program_section(conf_text, f"{group}_{num:02d}", num, 1, model)


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


def _model_path(settings: Settings) -> str | None:
    """The model's folder, without joining a split model to learn its size (its parts say it)."""
    from services.gpu_worker.engines.faster_whisper_engine import resolve_model

    found = lookup(settings.whisper_model)
    if found is not None and found.name == "base":
        return None
    try:
        return resolve_model(settings.whisper_model)[0]
    except ValueError:  # a transformers folder: its size is not known from a model.bin
        return None


def model_file_bytes(settings: Settings) -> int | None:
    """model.bin's size: each model's own, so a fleet of several models counts each one's cost."""
    from services.common.models.assembly import BASE_SIZE

    found = lookup(settings.whisper_model)
    if found is not None and found.name == "base":
        return BASE_SIZE
    return capacity.model_bytes(_model_path(settings))


def per_worker_bytes(settings: Settings, budget: capacity.Budget) -> int:
    from services.gpu_worker.engines.choice import choose, torch_compute_type
    from services.gpu_worker.engines.faster_whisper_engine import resolve_compute_type

    if choose(settings) == "torch":
        compute = torch_compute_type(settings.whisper_compute_type, budget.kind)
    else:
        compute = resolve_compute_type(settings.whisper_compute_type, budget.kind)
    speakers = settings.speaker_model != "off"
    on_device = speakers and budget.kind == "cuda" and _onnxruntime_has_cuda()
    return capacity.worker_bytes(
        budget.kind, compute, model_file_bytes(settings), settings.worker_memory_mb, speakers, on_device
    )


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve_count(settings: Settings, requested: int, running: int = 0, others: int = 0) -> int:
    """The worker count to run: `requested`, or as many as fit when it is 0 (auto). Raises CapacityError.
    `others`: workers of other models running beside them (on a CPU they take cores too)."""
    budget = budget_for(settings)
    per_worker = per_worker_bytes(settings, budget)
    if requested == 0:
        fit = capacity.fitting_workers(budget, per_worker, running, by_cores=True)
        if budget.kind == "cpu":
            fit = min(fit, budget.cores - others)
        return max(1, fit)
    return capacity.check_workers(requested, budget, per_worker, running)


def resolve_model_counts(settings: Settings) -> list[tuple[str, int]]:
    """WORKER_MODELS with `auto` resolved: fixed counts first, each must fit with its own model's size; what
    memory (and, on a CPU, cores) is left goes to the `auto` models in equal shares. Raises CapacityError."""
    counts = settings.model_counts()
    budget = budget_for(settings)
    sizes = {name: per_worker_bytes(settings.replace(whisper_model=name), budget) for name, _ in counts}
    usable = budget.free_bytes - int(budget.total_bytes * capacity.RESERVE_FRACTION)
    need = sum(count * sizes[name] for name, count in counts if count)
    fixed = sum(count for _, count in counts if count)
    if need > usable:
        detail = ", ".join(f"{name} {count} x {sizes[name] // capacity.MIB} MiB" for name, count in counts if count)
        raise capacity.CapacityError(
            f"WORKER_MODELS needs about {need // capacity.MIB} MiB ({detail}) and {max(0, usable) // capacity.MIB} "
            f"MiB is free on {budget.device} after {capacity.RESERVE_FRACTION:.0%} kept aside: lower the counts"
        )
    autos = [name for name, count in counts if count is None]
    out = []
    for name, count in counts:
        if count is None:
            share = (usable - need) // len(autos)
            count = max(1, share // sizes[name])
            if budget.kind == "cpu":
                count = min(count, max(1, (budget.cores - fixed) // len(autos)))
        out.append((name, count))
    return out


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


def _client(conf: Path) -> SupervisorClient:
    return SupervisorClient(f"unix://{conf.resolve().parent / 'run' / 'supervisor.sock'}")


def _run(client: SupervisorClient, steps: ScalePlan, stop_groups: list[str]) -> None:
    for name in steps.start:
        client.start(name, wait=False)
    # Workers drain in parallel: each finishes its calls, hands its streams back, then exits.
    with ThreadPoolExecutor(max(1, len(steps.stop))) as pool:
        list(pool.map(lambda name: client.stop(name, wait=True), steps.stop))
    for group in stop_groups:
        client.remove_group(group)


def scale(conf: Path, target: int) -> ScalePlan:
    """The single model's workers (the gpu_worker group and its extras) to `target`."""
    client = _client(conf)
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
    _run(client, steps, [f"gpu_worker_{num:02d}" for num in steps.remove])
    for num in steps.remove:
        (folder / f"gpu_worker_{num:02d}.conf").unlink(missing_ok=True)
    if steps.remove:
        client.reload_config()
    return steps


def running_counts(conf: Path, settings: Settings) -> dict[str, int]:
    """Workers running or starting now, by model."""
    by_model = model_workers(_client(conf).processes(), settings)
    return {model: sum(1 for w in ws if w.state in RUNNING) for model, ws in by_model.items()}


def scale_model(conf: Path, settings: Settings, model: str, target: int) -> ScalePlan:
    """One model's workers to `target` (`model` a WHISPER_MODEL value; see the module's docstring)."""
    client = _client(conf)
    processes = client.processes()
    name = served_name(model)
    mine = model_workers(processes, settings).get(name, [])
    if mine and all(group_model_slug(w.group) == "" for w in mine):
        return scale(conf, target)  # the single model's gpu_worker group and its extras
    group = model_group(slug(name))
    used = {n for p in processes if (n := worker_process_num(p.name)) is not None} | reserved_numbers(conf)
    folder = scaled_dir(conf)
    folder.mkdir(parents=True, exist_ok=True)
    text = conf.read_text()
    if not mine:
        if target == 0:
            return ScalePlan([], [], [], [])
        numbers = free_numbers(used, target, contiguous=True)
        (folder / f"{group}.conf").write_text(program_section(text, group, numbers[0], target, model))
        client.reload_config()
        client.add_group(group)  # autostart: its workers start now
        return ScalePlan([], numbers, [], [])
    keep, rest = mine[:target], mine[target:]
    start = [f"{w.group}:gpu_worker_{w.num:02d}" for w in keep if w.state not in RUNNING]
    stop = [f"{w.group}:gpu_worker_{w.num:02d}" for w in reversed(rest) if w.state in RUNNING]
    add = free_numbers(used, target - len(mine))
    for num in add:
        (folder / f"{group}_{num:02d}.conf").write_text(extra_program(text, num, group, model))
    if add:
        client.reload_config()
        for num in add:
            client.add_group(f"{group}_{num:02d}")
    # Scaled to 0 the model's groups go: its requests then fail at once instead of waiting for a worker.
    gone = sorted({w.group for w in rest if w.group != group or target == 0})
    steps = ScalePlan(start, add, stop, [w.num for w in rest if w.group in gone])
    _run(client, steps, gone)
    for removed in gone:
        (folder / f"{removed}.conf").unlink(missing_ok=True)
    if gone:
        client.reload_config()
    return steps


def catalogue_folder(settings: Settings, model: str) -> None:
    """A catalogue model's folder, joined now if need be (ModelFilesError when its packages are missing)."""
    found = lookup(model)
    if found is not None:
        found.folder(settings.model_cache_dir, settings.run_dir)


def parse_targets(words: list[str], settings: Settings) -> list[tuple[str, int]]:
    """`N`, `auto`, or `MODEL=N|auto` words as (model, count), 0 meaning auto only for a bare word."""
    out = []
    for word in words:
        name, sep, count = word.rpartition("=")
        model = name if sep else settings.whisper_model if not settings.multi_model else settings.model_counts()[0][0]
        text = count.strip().lower()
        if text != "auto" and not text.isdigit():
            raise ConfigError(
                f"{word!r}: give a number of workers or auto, e.g. `scribe scale 3` or `scribe scale base=2`"
            )
        if not sep and text == "0":
            raise ConfigError("`scribe scale 0`: name the model to scale to zero, e.g. `scribe scale base=0`")
        out.append((model, -1 if text == "auto" else int(text)))
    return out
