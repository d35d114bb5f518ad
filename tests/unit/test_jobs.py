"""A Job shared by the engine's thread and readers on others: every snapshot is one consistent state."""

from __future__ import annotations

import threading

import pytest

from pipelines.runtime.jobs import Job, JobSnapshot

WRITERS = 4
UPDATES = 2000
STEPS_PER_BATCH = 10


def _check(snap: JobSnapshot) -> None:
    assert 0 <= snap.step <= snap.total_steps
    assert 0.0 <= snap.fraction <= 1.0
    assert snap.eta is None or snap.eta >= 0
    assert snap.total_steps == snap.batch_total * STEPS_PER_BATCH  # set together by plan(), seen together


def test_snapshots_stay_consistent_under_concurrent_updates() -> None:
    job = Job()
    errors: list[BaseException] = []
    writing = threading.Event()

    def write(seed: int) -> None:
        try:
            writing.wait(5)
            for i in range(UPDATES):
                batches = 1 + (seed + i) % 4
                job.plan(batches, batches * STEPS_PER_BATCH)
                batch = (seed * 7 + i) % batches
                job.start_batch(batch, batch * STEPS_PER_BATCH)
                job.advance(batch * STEPS_PER_BATCH + i % (STEPS_PER_BATCH + 5))  # past the total: held at it
                job.set_status(("running", "queued")[i % 2])
                job.queued_at(i % 3 or None)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        try:
            writing.wait(5)
            for _ in range(UPDATES):
                _check(job.snapshot())
        except BaseException as exc:
            errors.append(exc)

    job.plan(1, STEPS_PER_BATCH)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    writing.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[0]
    _check(job.snapshot())


def test_job_changes_only_through_its_methods() -> None:
    job = Job()
    fresh = job.snapshot()
    assert fresh == JobSnapshot("queued", 0, 0, 0, 1, None, fresh.elapsed, False, False) and fresh.eta is None
    job.plan(2, 8)
    job.start_batch(1, 4)
    job.advance(6)
    snap = job.snapshot()
    assert (snap.step, snap.total_steps, snap.batch_index, snap.batch_step, snap.steps_per_batch) == (6, 8, 1, 2, 4)
    assert snap.fraction == 0.75 and job.fraction == 0.75
    job.finish_steps()
    assert job.step == job.total_steps == 8
    with pytest.raises(AttributeError):
        job.step = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown job status"):
        job.set_status("half-done")
    job.skip()
    assert job.snapshot().skip_requested and job.take_skip() and not job.skip_requested
    job.interrupt()
    assert job.snapshot().interrupted


def test_parts_of_a_script_job_add_up_and_the_clock_runs_from_the_first() -> None:
    job = Job()
    with job.part(0, 3):  # e.g. an upscale of 4 model tiles
        job.plan(1)
        job.plan(1, 4)
        job.start_batch(0, 0)
        job.advance(2)
        assert (job.step, job.total_steps, job.batch_index, job.batch_total) == (2, 12, 0, 3)
        job.finish_steps()
    started = job.started_at
    with job.part(1, 3):  # then a generation of 3 steps
        job.start_clock()
        job.plan(1)  # unknown yet: the bar stays where it was
        assert (job.step, job.total_steps, job.batch_index) == (4, 12, 1)
        job.plan(1, 3)
        job.advance(3)
        assert (job.step, job.total_steps) == (6, 9) and job.snapshot().batch_step == 3
    with job.part(2, 3):
        job.plan(1, 3)
        job.finish_steps()
    assert job.fraction == 1.0 and job.started_at == started
    job.plan(2, 10)  # outside a part, a plan is the whole job's again
    assert (job.total_steps, job.batch_total) == (10, 2)
    with pytest.raises(ValueError, match="part 3 of 3"), job.part(3, 3):
        pass
