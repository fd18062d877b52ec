"""Worker-count planning and the device guard, against FakeNvml (this machine has no GPU)."""

from __future__ import annotations

import pytest

from services.cli.scale import extra_program, plan
from services.common import capacity
from services.common.capacity import GIB, Budget, CapacityError
from services.gpu_worker.device import DeviceProbe
from services.gpu_worker.guard import DeviceGuard, is_device_error
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.helpers import ROOT

pytestmark = pytest.mark.fast


def h100(used_gib: float) -> FakeNvml:
    return FakeNvml([FakeGpu("NVIDIA H100", "GPU-h100", total=80 * GIB, used=int(used_gib * GIB))])


def test_cuda_budget_reads_the_configured_device() -> None:
    budget = capacity.cuda_budget("0", nvml=h100(20))
    assert budget is not None and budget.kind == "cuda"
    assert budget.free_bytes == 60 * GIB
    assert capacity.cuda_budget("3", nvml=h100(0)) is None  # no such device: fall back to CPU


def test_large_v2_fp16_workers_on_an_80_gib_gpu() -> None:
    budget = capacity.cuda_budget("GPU-h100", nvml=h100(0))
    assert budget is not None
    per_worker = capacity.worker_bytes("cuda", "float16", weights_on_disk=int(3.09 * GIB))
    fit = capacity.fitting_workers(budget, per_worker)
    assert 15 <= fit <= 20
    assert capacity.check_workers(4, budget, per_worker) == 4
    with pytest.raises(CapacityError) as info:
        capacity.check_workers(fit + 1, budget, per_worker)
    assert f"At most {fit} fit" in str(info.value) and "GPU_SCALE_WORKERS" in str(info.value)


def test_running_workers_count_as_already_placed() -> None:
    budget = capacity.cuda_budget("0", nvml=h100(75))  # 5 GiB free, most of it held by 3 running workers
    per_worker = 4 * GIB
    assert capacity.fitting_workers(budget, per_worker, running=3) == 3  # type: ignore[arg-type]
    with pytest.raises(CapacityError):
        capacity.check_workers(4, budget, per_worker, running=3)  # type: ignore[arg-type]


def test_cpu_auto_is_capped_by_cores_and_explicit_counts_by_memory() -> None:
    budget = Budget("cpu", "cpu", total_bytes=24 * GIB, free_bytes=22 * GIB, cores=2)
    per_worker = capacity.worker_bytes("cpu", "int8", weights_on_disk=75 * 2**20)
    assert capacity.fitting_workers(budget, per_worker, by_cores=True) == 2
    assert capacity.check_workers(4, budget, per_worker) == 4
    with pytest.raises(CapacityError):
        capacity.check_workers(4, Budget("cpu", "cpu", 1 * GIB, GIB // 2, 2), per_worker)


def test_guard_stops_and_resumes_work_with_free_memory() -> None:
    nvml = h100(79.8)
    probe = DeviceProbe("0", enabled=True, nvml=nvml)
    guard = DeviceGuard(min_free_bytes=512 * 2**20)
    reason = guard.verdict(probe.read())
    assert "MIN_FREE_VRAM_MB=512" in reason
    nvml.gpus[0].used = 40 * GIB
    assert guard.verdict(probe.read()) == ""


def test_guard_holds_after_a_cuda_error_then_recovers() -> None:
    guard = DeviceGuard(min_free_bytes=0)
    error = RuntimeError("CUDA failed with error out of memory")
    assert is_device_error(error) and not is_device_error(RuntimeError("bad shape"))
    guard.record_error(error, now=100.0)
    probe = DeviceProbe("0", enabled=True, nvml=h100(1))
    assert "CUDA error" in guard.verdict(probe.read(), now=101.0)
    assert guard.verdict(probe.read(), now=111.0) == ""


def test_scale_plan() -> None:
    running = {0: ("gpu_worker", "RUNNING"), 1: ("gpu_worker", "RUNNING")}
    up = plan(running, 4)
    assert (up.add, up.start, up.stop) == ([2, 3], [], [])
    with_extra = {**running, 2: ("gpu_worker_02", "RUNNING")}
    down = plan(with_extra, 1)
    assert down.stop == ["gpu_worker_02:gpu_worker_02", "gpu_worker:gpu_worker_01"]
    assert down.remove == [2]
    back = plan({0: ("gpu_worker", "RUNNING"), 1: ("gpu_worker", "STOPPED")}, 2)
    assert back.start == ["gpu_worker:gpu_worker_01"] and not back.add


def test_extra_program_is_a_copy_of_the_worker_section() -> None:
    text = extra_program((ROOT / "supervisord.conf").read_text(), 5)
    assert "[program:gpu_worker_05]" in text
    assert "numprocs = 1" in text and "numprocs_start = 5" in text
    assert "process_name = gpu_worker_%(process_num)02d" in text
    assert "--process-num %(process_num)d" in text
    assert "stopwaitsecs = 30" in text


def test_the_speaker_model_counts_in_a_worker_s_memory_where_it_runs() -> None:
    cpu = capacity.worker_bytes("cpu", "int8", weights_on_disk=75 * 2**20)
    assert capacity.worker_bytes("cpu", "int8", 75 * 2**20, speakers=True) == cpu + capacity.SPEAKER_BYTES
    gpu = capacity.worker_bytes("cuda", "float16", weights_on_disk=int(3.09 * GIB))
    # onnxruntime without CUDA runs it in host memory: the GPU's budget does not pay for it.
    assert capacity.worker_bytes("cuda", "float16", int(3.09 * GIB), speakers=True) == gpu
    assert capacity.worker_bytes("cuda", "float16", int(3.09 * GIB), 0, True, True) == gpu + capacity.SPEAKER_BYTES
    from services.cli.scale import per_worker_bytes
    from services.common.config import Settings

    budget = Budget("cpu", "cpu", 24 * GIB, 22 * GIB, 2)
    on = per_worker_bytes(Settings.from_env({}), budget)
    off = per_worker_bytes(Settings.from_env({"SPEAKER_MODEL": "off"}), budget)
    assert on - off == capacity.SPEAKER_BYTES
