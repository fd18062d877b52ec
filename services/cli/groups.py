"""Each model's workers as a supervisord group of their own (WORKER_MODELS).

`scribe start` writes one group a model into run/scaled/ (which supervisord.conf includes), each a copy of
supervisord.conf's [program:gpu_worker] section with the model in its environment: group `gpu_worker_SLUG`
(SLUG the model's name, e.g. `gpu_worker_base`, `gpu_worker_tiny.en`) holding that model's workers, numbered
on from the previous model's. [program:gpu_worker] itself then runs no process (numprocs 0). So
`supervisorctl stop gpu_worker_base:*` stops one model's workers, and `scribe scale base=2` changes one
model's count. Worker names stay `gpu_worker_NN` across the fleet: their sockets and ports are numbered.
"""

from __future__ import annotations

import configparser
import io
import re
from dataclasses import dataclass
from pathlib import Path

from services.common.config import Settings
from services.common.models.catalogue import served_name, slug
from services.gateway.routing.supervisor import ProcessInfo, group_model_slug, model_group, worker_process_num

BASE_SECTION = "program:gpu_worker"


def scaled_dir(conf: Path) -> Path:
    return conf.resolve().parent / "run" / "scaled"


def program_section(conf_text: str, group: str, start: int, count: int, model: str | None = None) -> str:
    """supervisord.conf's worker section as group `group` holding workers start..start+count-1, on `model`
    (a WHISPER_MODEL value; None keeps the fleet's)."""
    parser = configparser.RawConfigParser()
    parser.read_string(conf_text)
    section = dict(parser.items(BASE_SECTION))
    section.update(numprocs=str(count), numprocs_start=str(start), process_name="gpu_worker_%(process_num)02d")
    if model is not None:
        # %% because supervisord expands %(...)s in the value; the quotes keep commas in a path whole.
        quoted = model.replace("%", "%%").replace('"', "")
        section["environment"] = f'{section.get("environment", "")},WHISPER_MODEL="{quoted}"'.lstrip(",")
    out = configparser.RawConfigParser()
    name = f"program:{group}"
    out.add_section(name)
    for key, value in section.items():
        out.set(name, key, value)
    buffer = io.StringIO()
    buffer.write("; written by `scribe start` / `scribe scale`; the next `scribe start` writes it anew\n")
    out.write(buffer)
    return buffer.getvalue()


def write_model_groups(conf: Path, counts: list[tuple[str, int]]) -> list[str]:
    """At start: one group a model with workers, numbered on from the previous model's. Returns the groups."""
    folder = scaled_dir(conf)
    folder.mkdir(parents=True, exist_ok=True)
    text = conf.read_text()
    start, groups = 0, []
    for model, count in counts:
        if count <= 0:
            continue
        group = model_group(slug(served_name(model)))
        (folder / f"{group}.conf").write_text(program_section(text, group, start, count, model))
        groups.append(group)
        start += count
    return groups


_RANGE = re.compile(r"^\s*(numprocs|numprocs_start)\s*=\s*(\d+)", re.MULTILINE)


def reserved_numbers(conf: Path) -> set[int]:
    """Worker numbers the group files in run/scaled/ hold (a group removed from supervisord keeps none)."""
    out: set[int] = set()
    for path in scaled_dir(conf).glob("*.conf"):
        values = dict(_RANGE.findall(path.read_text()))
        start, count = int(values.get("numprocs_start", 0)), int(values.get("numprocs", 1))
        out.update(range(start, start + count))
    return out


def free_numbers(used: set[int], count: int, contiguous: bool = False) -> list[int]:
    """The lowest `count` worker numbers not in `used` (a run of consecutive ones when `contiguous`)."""
    if contiguous:
        start = 0
        while any(n in used for n in range(start, start + count)):
            start += 1
        return list(range(start, start + count))
    out: list[int] = []
    n = 0
    while len(out) < count:
        if n not in used:
            out.append(n)
        n += 1
    return out


@dataclass(frozen=True)
class Worker:
    num: int
    group: str
    state: str


def model_workers(processes: list[ProcessInfo], settings: Settings) -> dict[str, list[Worker]]:
    """supervisord's workers by the model their group stands for (the gpu_worker group: the fleet's default)."""
    slugs = {slug(name): name for name in settings.served_models()}
    out: dict[str, list[Worker]] = {}
    for proc in processes:
        num = worker_process_num(proc.name)
        part = group_model_slug(proc.group)
        if num is None or part is None:
            continue
        model = settings.default_model if part == "" else slugs.get(part, part)
        out.setdefault(model, []).append(Worker(num, proc.group, proc.state))
    for workers in out.values():
        workers.sort(key=lambda w: w.num)
    return out
