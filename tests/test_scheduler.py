"""The batch scheduler's ordering, batching, cancellation and fallback, driven by a scripted engine.

ScriptedFakeEngine is a fake: it decodes nothing, records every batch it is given, and can be held
while a test queues more work, so the order the scheduler picks is observable. The real engine's
batches are tested through a live worker in test_batching.py.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import CancelledError

import numpy as np
import pytest

from services.gpu_worker.batching.scheduler import BatchScheduler, BatchStats, CallToken, Priority
from services.gpu_worker.engines.base import DecodeOptions, EngineInfo, Segment, WindowJob, WindowResult

pytestmark = pytest.mark.fast

INFO = EngineInfo("fake", "fake", "cpu", "cpu", "int8", False, ("en",))


class ScriptedFakeEngine:
    def __init__(self, bad_until: float = -1.0, fail_on: str | None = None) -> None:
        self.info = INFO
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.bad_until = bad_until  # decodes at temperatures up to this look wrong
        self.fail_on = fail_on

    def batch_key(self, job: WindowJob) -> Hashable:
        return (job.options.beam_size, job.temperature)

    def encoder_seconds(self, job: WindowJob) -> float:
        return 30.0

    def decode_batch(self, jobs: Sequence[WindowJob]) -> list[WindowResult]:
        self.entered.set()
        self.gate.wait(10)
        names = [name_of(job) for job in jobs]
        self.batches.append(names)
        if self.fail_on in names:
            raise RuntimeError("CUDA failed with error out of memory")
        return [
            WindowResult(
                segments=(Segment(0, 0.0, 1.0, f"{name}@{job.temperature}"),),
                language="en",
                language_probability=1.0,
                needs_fallback=job.temperature <= self.bad_until,
                avg_logprob=-job.temperature,
            )
            for name, job in zip(names, jobs, strict=True)
        ]


def job(name: str, beam: int = 5, **options: object) -> WindowJob:
    audio = np.zeros(16, dtype=np.float32)
    return WindowJob(audio, DecodeOptions(beam_size=beam, initial_prompt=name, **options))  # type: ignore[arg-type]


def name_of(j: WindowJob) -> str:
    return j.options.initial_prompt or ""


@pytest.fixture
def engine() -> ScriptedFakeEngine:
    return ScriptedFakeEngine()


def hold(engine: ScriptedFakeEngine, scheduler: BatchScheduler) -> None:
    """Keep the scheduler busy with one batch, so everything queued next waits together."""
    engine.gate.clear()
    scheduler.submit(job("blocker", beam=9, temperatures=(0.0,)), Priority.BULK)
    assert engine.entered.wait(5)


def test_finals_go_first_then_interims_then_bulk_in_full_batches(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=3, window_s=0.0)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"bulk{i}"), Priority.BULK) for i in range(4)]
    futures.append(scheduler.submit(job("interim"), Priority.INTERIM))
    futures.append(scheduler.submit(job("final"), Priority.FINAL))
    engine.gate.set()
    for future in futures:
        future.result(5)
    assert engine.batches[1:] == [["final", "interim", "bulk0"], ["bulk1", "bulk2", "bulk3"]]
    assert scheduler.stats.batches_by_size[3] == 2 and scheduler.stats.windows_decoded == 7
    scheduler.close()


def test_batch_job_windows_wait_for_every_bulk_window(engine: ScriptedFakeEngine) -> None:
    """A batch job's windows (Priority.BATCH) come after interactive bulk windows queued later; on a GPU they
    fill a batch's free places, and each window's audio is counted once in audio_s."""
    scheduler = BatchScheduler(engine, max_batch=3, window_s=0.0)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"batch{i}"), Priority.BATCH) for i in range(3)]
    futures += [scheduler.submit(job(f"bulk{i}"), Priority.BULK) for i in range(2)]
    engine.gate.set()
    for future in futures:
        future.result(5)
    assert engine.batches[1:] == [["bulk0", "bulk1", "batch0"], ["batch1", "batch2"]]
    assert scheduler.stats.audio_s == pytest.approx(6 * 16 / 16_000)
    scheduler.close()


def test_on_a_cpu_batch_job_windows_go_one_at_a_time_and_alone(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=4, window_s=0.0, streams_with_bulk=False)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"batch{i}"), Priority.BATCH) for i in range(2)]
    futures.append(scheduler.submit(job("bulk"), Priority.BULK))
    engine.gate.set()
    for future in futures:
        future.result(5)
    # The bulk window takes no batch-job window along, and batch-job windows go one by one, so an
    # interactive call arriving now waits for one window at most.
    assert engine.batches[1:] == [["bulk"], ["batch0"], ["batch1"]]
    scheduler.close()


def test_on_a_cpu_stream_windows_go_alone_finals_first(engine: ScriptedFakeEngine) -> None:
    # On a CPU a batch costs what its windows cost one by one: a final in a batch with interims or other
    # finals would wait for all of them, so every stream window is decoded alone, finals before interims.
    scheduler = BatchScheduler(engine, max_batch=4, window_s=0.5, streams_with_bulk=False)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"bulk{i}"), Priority.BULK) for i in range(3)]
    futures += [scheduler.submit(job(f"interim{i}"), Priority.INTERIM) for i in range(2)]
    futures += [scheduler.submit(job(f"final{i}"), Priority.FINAL) for i in range(2)]
    engine.gate.set()
    for future in futures:
        future.result(5)
    assert engine.batches[1:] == [
        ["final0"],
        ["final1"],
        ["interim0"],
        ["interim1"],
        ["bulk0"],
        ["bulk1"],
        ["bulk2"],
    ]
    # No stream window waited for batch-mates (window_s is 0.5 s): formation time only for the bulk ones.
    assert all(f.timing is not None and f.timing.form_s < 0.4 for f in futures[3:])
    scheduler.close()


def test_on_a_cpu_a_final_waits_for_one_bulk_window_while_streams_are_live(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0, streams_with_bulk=False)
    scheduler.stream_opened()  # open, but none of its windows came in lately (a loaded CPU, or a pause)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"bulk{i}"), Priority.BULK) for i in range(4)]
    futures.append(scheduler.submit(job("final"), Priority.FINAL))
    engine.gate.set()
    for future in futures:
        future.result(5)
    # Bulk windows one at a time: a final that comes in while one runs waits for that one only.
    assert engine.batches[1:] == [["final"], ["bulk0"], ["bulk1"], ["bulk2"], ["bulk3"]]
    scheduler.stream_closed()
    scheduler.close()


def test_on_a_cpu_bulk_windows_batch_again_once_streams_are_gone(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0, streams_with_bulk=False)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"bulk{i}"), Priority.BULK) for i in range(4)]
    engine.gate.set()
    for future in futures:
        future.result(5)
    assert engine.batches[1:] == [["bulk0", "bulk1", "bulk2", "bulk3"]]
    scheduler.close()


def test_windows_with_other_options_go_in_other_batches(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"b{beam}-{i}", beam=beam), Priority.BULK) for i in range(2) for beam in (1, 5)]
    engine.gate.set()
    assert all(f.result(5).segments for f in futures)
    assert sorted(engine.batches[1:]) == [["b1-0", "b1-1"], ["b5-0", "b5-1"]]
    scheduler.close()


def test_a_batch_that_is_not_full_waits_for_more_windows() -> None:
    engine = ScriptedFakeEngine()
    scheduler = BatchScheduler(engine, max_batch=4, window_s=0.5)
    first = scheduler.submit(job("a"), Priority.BULK)
    second = scheduler.submit(job("b"), Priority.BULK)  # within the batch window: same batch
    first.result(5), second.result(5)
    assert engine.batches == [["a", "b"]]
    scheduler.close()


def test_cancelling_a_call_drops_its_queued_windows_and_not_its_batch_mates(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0)
    hold(engine, scheduler)
    gone, kept = CallToken(), CallToken()
    dropped = [scheduler.submit(job(f"gone{i}"), Priority.BULK, gone) for i in range(3)]
    others = [scheduler.submit(job(f"kept{i}"), Priority.BULK, kept) for i in range(3)]
    assert scheduler.cancel(gone) == 3
    engine.gate.set()
    for future in dropped:
        with pytest.raises(CancelledError):
            future.result(5)
    assert [f.result(5).segments[0].text for f in others] == ["kept0@0.0", "kept1@0.0", "kept2@0.0"]
    assert engine.batches[1:] == [["kept0", "kept1", "kept2"]]
    assert scheduler.stats.mixed_batches == 0
    scheduler.close()


def test_windows_of_two_calls_share_a_batch_and_are_counted(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0)
    hold(engine, scheduler)
    futures = [scheduler.submit(job(f"c{i}"), Priority.BULK, CallToken()) for i in range(2)]
    engine.gate.set()
    for future in futures:
        future.result(5)
    assert engine.batches[1:] == [["c0", "c1"]] and scheduler.stats.mixed_batches == 1
    scheduler.close()


def test_a_window_that_looks_wrong_is_decoded_again_alone_at_the_next_temperature() -> None:
    engine = ScriptedFakeEngine(bad_until=0.2)
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0)
    hold(engine, scheduler)
    temperatures = (0.0, 0.2, 0.4)
    bad = scheduler.submit(job("bad", temperatures=temperatures), Priority.BULK)
    engine.gate.set()
    assert bad.result(5).segments[0].text == "bad@0.4"
    assert engine.batches[1:] == [["bad"], ["bad"], ["bad"]] and scheduler.stats.fallbacks == 2
    scheduler.close()


def test_every_temperature_wrong_keeps_the_most_probable_decode() -> None:
    engine = ScriptedFakeEngine(bad_until=1.0)
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0)
    result = scheduler.submit(job("x", temperatures=(0.0, 0.5)), Priority.BULK).result(5)
    assert result.segments[0].text == "x@0.0"  # avg_logprob -0.0 beats -0.5
    scheduler.close()


def test_an_engine_error_fails_only_the_windows_of_that_batch() -> None:
    engine = ScriptedFakeEngine(fail_on="boom")
    scheduler = BatchScheduler(engine, max_batch=2, window_s=0.0)
    hold(engine, scheduler)
    failing = [scheduler.submit(job(name), Priority.BULK) for name in ("boom", "mate")]
    later = scheduler.submit(job("later"), Priority.BULK)
    engine.gate.set()
    for future in failing:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(5)
    assert later.result(5).segments[0].text == "later@0.0"
    scheduler.close()


def test_short_bulk_windows_of_several_calls_are_packed_into_one(engine: ScriptedFakeEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch=8, window_s=0.0, streams_with_bulk=False, pack_short=True)
    hold(engine, scheduler)
    futures = [scheduler.submit(job("short"), Priority.BULK, CallToken()) for _ in range(3)]
    futures.append(scheduler.submit(job("other options"), Priority.BULK, CallToken()))
    engine.gate.set()
    results = [f.result(5) for f in futures]
    # One window decoded for three calls; the fake's one segment (0-1 s) lies in the first call's audio.
    assert engine.batches[1:] == [["short", "other options"]] and scheduler.stats.packed_windows == 3
    assert [len(r.segments) for r in results] == [1, 0, 0, 1]
    scheduler.close()


def test_busy_fraction_counts_the_recent_decoding_time_only() -> None:
    stats = BatchStats()
    stats.busy.extend([(90.0, 95.0), (97.0, 98.5), (99.0, 99.5)])
    # The last 3 s (97 to 100): 1.5 s and 0.5 s of decoding; the batch that ended at 95 is too old.
    assert stats.busy_fraction(3.0, now=100.0) == pytest.approx(2.0 / 3.0)
    assert stats.busy_fraction(10.0, now=100.0) == pytest.approx(7.0 / 10.0)
    assert BatchStats().busy_fraction(3.0, now=100.0) == 0.0
