"""WORKER_MODELS, the model groups `scribe` writes, `scribe scale` targets, and routing per model in the
gateway's registry and queues (pure: no fleet, no model)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest

from services.cli import groups, scale
from services.common.config import ConfigError, Settings
from services.common.errors import RequestError
from services.gateway.routing.dispatch import Dispatcher
from services.gateway.routing.models import FleetModels
from services.gateway.routing.registry import Registry, WorkerHandle
from services.gen import worker_pb2
from tests.helpers import ROOT

pytestmark = pytest.mark.fast


def test_worker_models_setting() -> None:
    s = Settings.from_env({"WORKER_MODELS": "embedded:2, base, large-v2:auto, base.en:0"})
    assert s.model_counts() == [("embedded", 2), ("base", 1), ("large-v2", None), ("base.en", 0)]
    assert s.served_models() == ["tiny.en", "base", "large-v2", "base.en"] and s.default_model == "tiny.en"
    assert s.multi_model and s.worker_count == 4
    single = Settings.from_env({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "3"})
    assert not single.multi_model and single.served_models() == ["tiny.en"] and single.worker_count == 3
    for bad, why in (("tiny.en:2,embedded", "named twice"), ("base:65", "0 to 64"), (":2", "names no model")):
        with pytest.raises(ConfigError, match=why):
            Settings.from_env({"WORKER_MODELS": bad})
    assert Settings.from_env({"WORKER_IDLE_UNLOAD_S": "300"}).worker_idle_unload_s == 300
    niced = Settings.from_env({"WORKER_MODEL_NICE": "base:10,embedded:0"})
    assert (niced.model_nice("base"), niced.model_nice("tiny.en"), niced.model_nice("large-v2")) == (10, 0, 0)
    with pytest.raises(ConfigError, match="0 to 19"):
        Settings.from_env({"WORKER_MODEL_NICE": "base:20"})


def test_model_groups_are_copies_of_the_worker_section(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text((ROOT / "supervisord.conf").read_text())
    assert groups.write_model_groups(conf, [("embedded", 2), ("large-v2", 0), ("base", 1)]) == [
        "gpu_worker_tiny.en",
        "gpu_worker_base",
    ]
    base = (groups.scaled_dir(conf) / "gpu_worker_base.conf").read_text()
    assert "[program:gpu_worker_base]" in base and "numprocs = 1" in base and "numprocs_start = 2" in base
    assert 'WHISPER_MODEL="base"' in base and "process_name = gpu_worker_%(process_num)02d" in base
    assert groups.reserved_numbers(conf) == {0, 1, 2}
    assert groups.free_numbers({0, 1, 2, 4}, 2) == [3, 5]
    assert groups.free_numbers({0, 1, 2, 4}, 2, contiguous=True) == [5, 6]


def test_scale_targets() -> None:
    multi = Settings.from_env({"WORKER_MODELS": "tiny.en:2,base:1"})
    assert scale.parse_targets(["3", "base=0", "base=auto"], multi) == [("tiny.en", 3), ("base", 0), ("base", -1)]
    for bad in ("0", "base=x"):
        with pytest.raises(ConfigError):
            scale.parse_targets([bad], multi)


def _worker(registry: Registry, name: str, model: str, state: int = worker_pb2.MODEL_STATE_LOADED) -> WorkerHandle:
    handle = registry.ensure(name, f"unix:///tmp/{name}.sock")
    handle.supervisor_state, handle.supervisor_pid = "RUNNING", 1
    health = worker_pb2.WorkerHealth(
        worker_id=name, pid=1, status=worker_pb2.WORKER_STATUS_SERVING, max_concurrent_requests=1, model_name=model
    )
    health.model_state = state  # type: ignore[assignment]
    handle.record_health(health)
    return handle


def test_routing_is_per_model_and_prefers_loaded_workers() -> None:
    registry = Registry([])
    _worker(registry, "gpu_worker_00", "tiny.en")
    _worker(registry, "gpu_worker_01", "base", worker_pb2.MODEL_STATE_UNLOADED)
    _worker(registry, "gpu_worker_02", "base")
    assert {registry.pick("tiny.en").name for _ in range(4)} == {"gpu_worker_00"}  # type: ignore[union-attr]
    assert {registry.pick("base").name for _ in range(4)} == {"gpu_worker_02"}  # type: ignore[union-attr]
    settings = Settings.from_env({"WORKER_MODELS": "tiny.en:1,base:2"})
    models = FleetModels(settings, registry)
    assert [models.resolve(n) for n in ("", "whisper-1", "embedded", "base")] == [
        "tiny.en",
        "tiny.en",
        "tiny.en",
        "base",
    ]
    with pytest.raises(RequestError) as caught:
        models.resolve("medium")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "tiny.en (default), base" in caught.value.message

    async def queues() -> None:
        dispatcher = Dispatcher(registry, queue_size=1, wait_s=0.2)
        async with dispatcher.slot(set(), None, "base") as first:
            assert first.name == "gpu_worker_02"  # the loaded one first
            async with dispatcher.slot(set(), None, "base") as second:
                assert second.name == "gpu_worker_01"  # then the one that loads its model again
                # base is full: its own queue takes one call, then refuses; tiny.en's calls are not held up.
                waiting = asyncio.ensure_future(dispatcher.slot(set(), None, "base").__aenter__())
                await asyncio.sleep(0.05)
                assert dispatcher.queued["base"] == 1
                with pytest.raises(RequestError) as full:
                    async with dispatcher.slot(set(), None, "base"):
                        pass
                assert full.value.reason == "QUEUE_FULL" and "of model base" in full.value.message
                async with dispatcher.slot(set(), None, "tiny.en") as other:
                    assert other.name == "gpu_worker_00"
                waiting.cancel()
        with pytest.raises(RequestError) as none:
            async with dispatcher.slot(set(), None, "large-v2"):
                pass
        assert none.value.reason == "MODEL_NOT_SERVING"

    asyncio.run(queues())


def test_batch_pieces_wait_behind_interactive_calls_of_their_model_only() -> None:
    """`slot(..., model, batch=True)` (a job's piece): a free slot of its own model, only while no
    interactive call waits for that model's workers; never QUEUE_FULL; other models' queues do not hold it."""
    registry = Registry([])
    _worker(registry, "gpu_worker_00", "tiny.en")
    _worker(registry, "gpu_worker_01", "base")

    held: list[AbstractAsyncContextManager[WorkerHandle]] = []  # referenced: a collected one frees its slot

    async def enter(dispatcher: Dispatcher, model: str, batch: bool = False) -> asyncio.Task[WorkerHandle]:
        held.append(dispatcher.slot(set(), None, model, batch=batch))
        task = asyncio.ensure_future(held[-1].__aenter__())
        await asyncio.sleep(0.02)
        return task

    async def scenario() -> None:
        dispatcher = Dispatcher(registry, queue_size=1, wait_s=5)
        first = dispatcher.slot(set(), None, "tiny.en")
        assert (await first.__aenter__()).name == "gpu_worker_00"
        piece = await enter(dispatcher, "tiny.en", batch=True)
        call = await enter(dispatcher, "tiny.en")
        assert not piece.done() and not call.done() and dispatcher.queued["tiny.en"] == 1
        # The queue of one is full for interactive calls; pieces are never refused, they wait.
        with pytest.raises(RequestError) as full:
            await dispatcher.slot(set(), None, "tiny.en").__aenter__()
        assert full.value.reason == "QUEUE_FULL"
        second_piece = await enter(dispatcher, "tiny.en", batch=True)
        assert dispatcher.batch_waiting == 2
        # A base piece takes base's free worker at once, although tiny.en's call waits.
        other = await enter(dispatcher, "base", batch=True)
        assert other.done() and other.result().name == "gpu_worker_01"
        # The slot frees: the waiting interactive call takes it, never the pieces that waited longer.
        await first.__aexit__(None, None, None)
        await asyncio.sleep(0.02)
        assert call.done() and call.result().name == "gpu_worker_00"
        assert not piece.done() and not second_piece.done()
        # Its call done and nobody waiting, a piece of its model takes the slot (not base's worker).
        await held[1].__aexit__(None, None, None)
        await asyncio.sleep(0.02)
        assert [t.done() for t in (piece, second_piece)].count(True) == 1
        taken = piece if piece.done() else second_piece
        assert taken.result().name == "gpu_worker_00"
        for task in (piece, second_piece):
            task.cancel()
        await asyncio.sleep(0)
        assert dispatcher.batch_waiting == 0

    asyncio.run(scenario())


def test_a_retried_call_is_never_refused_queue_full() -> None:
    """A call whose worker went away mid-call comes back to `slot()` with the workers it tried: it was
    admitted, so a full queue makes it wait rather than fail (a restarted worker's first calls fail with
    UNAVAILABLE, and refusing their retries failed calls the fleet had accepted)."""
    registry = Registry([])
    _worker(registry, "gpu_worker_00", "tiny.en")

    async def scenario() -> None:
        dispatcher = Dispatcher(registry, queue_size=1, wait_s=5)
        first = dispatcher.slot(set(), None, "tiny.en")
        assert (await first.__aenter__()).name == "gpu_worker_00"
        queued = dispatcher.slot(set(), None, "tiny.en")
        waiting = asyncio.ensure_future(queued.__aenter__())
        await asyncio.sleep(0.02)
        with pytest.raises(RequestError) as full:  # a newcomer: the queue of one is full
            await dispatcher.slot(set(), None, "tiny.en").__aenter__()
        assert full.value.reason == "QUEUE_FULL"
        retried = dispatcher.slot({"gpu_worker_01"}, None, "tiny.en")
        retry = asyncio.ensure_future(retried.__aenter__())
        await asyncio.sleep(0.02)
        assert not retry.done() and dispatcher.queued["tiny.en"] == 2  # waiting past the queue's size
        await first.__aexit__(None, None, None)
        await asyncio.sleep(0.02)
        assert waiting.done() and not retry.done()  # the queue's order holds
        await queued.__aexit__(None, None, None)
        await asyncio.sleep(0.02)
        assert retry.done() and retry.result().name == "gpu_worker_00"
        await retried.__aexit__(None, None, None)

    asyncio.run(scenario())
