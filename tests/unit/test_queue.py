"""The generation queue: first come first served, bounded, positions visible, interrupt while waiting."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from pipelines.generate import Engine
from pipelines.models.checkpoints import HashCache
from pipelines.models.manager import PipelineManager
from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import Job
from pipelines.runtime.queue import GenerationQueue, QueueFullError
from tests.threads import CheckedThread


def test_jobs_run_in_order_and_see_their_place() -> None:
    queue = GenerationQueue(max_size=4)
    order: list[int] = []
    jobs = [Job() for _ in range(3)]
    first_in = threading.Event()
    release = threading.Event()

    def worker(index: int) -> None:
        with queue.place(jobs[index]) as place:
            assert queue.wait_turn(place)
            if index == 0:
                first_in.set()
                release.wait(5)
            order.append(index)

    threads = [CheckedThread(target=worker, args=(0,))]
    threads[0].start()
    assert first_in.wait(5)
    for i in (1, 2):
        threads.append(CheckedThread(target=worker, args=(i,)))
        threads[-1].start()
        while queue.position(jobs[i]) is None:
            time.sleep(0.01)
    assert [queue.position(j) for j in jobs] == [0, 1, 2]
    assert [j.queue_position for j in jobs] == [0, 1, 2]
    assert queue.running is jobs[0] and len(queue) == 3
    release.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]
    assert len(queue) == 0 and queue.running is None
    assert all(j.queue_position is None for j in jobs)


def test_a_full_queue_refuses_more() -> None:
    queue = GenerationQueue(max_size=1)
    with queue.place(Job()), pytest.raises(QueueFullError, match="queue is full"), queue.place(Job()):
        pass
    with queue.place(Job()):  # the place was freed
        pass


def test_interrupt_while_waiting_leaves_the_line() -> None:
    queue = GenerationQueue(max_size=2)
    waiting = Job()
    result: list[bool] = []
    with queue.place(Job()) as head:
        assert queue.wait_turn(head)

        def wait() -> None:
            with queue.place(waiting) as place:
                result.append(queue.wait_turn(place))

        thread = CheckedThread(target=wait)
        thread.start()
        while queue.position(waiting) is None:
            time.sleep(0.01)
        waiting.interrupt()
        thread.join(5)
    assert result == [False]


def test_the_engine_keeps_an_empty_queue_it_was_given(tmp_path: Path) -> None:
    """An empty queue has length 0 and so is falsy: ``queue or GenerationQueue()`` once dropped --queue-size."""
    queue = GenerationQueue(max_size=3)
    manager = PipelineManager(tmp_path / "none", torch.device("cpu"), torch.float32, HashCache(tmp_path / "h.json"))
    engine = Engine(manager, tmp_path / "outputs", queue=queue)
    assert engine.queue is queue
    with ExitStack() as line:
        for _ in range(3):  # three jobs waiting or running
            line.enter_context(queue.place(Job()))
        with pytest.raises(QueueFullError, match=r"queue is full \(3 jobs"):
            engine.generate(GenerationRequest(prompt="x", steps=1, width=64, height=64, save=False))
