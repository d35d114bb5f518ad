"""The queue as each user sees it: one's own jobs in full, others' anonymised; cancel own, admins cancel any."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest

from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import Job, JobLabel
from pipelines.runtime.queue import GenerationQueue
from pipelines.runtime.queue_view import JobNotFoundError, NotAllowedError, cancel_job, job_label, queue_rows
from tests.threads import CheckedThread


def label(owner: str, prompt: str = "secret prompt", size: int = 64) -> JobLabel:
    return JobLabel(owner=owner, mode="txt2img", prompt=prompt, width=size, height=size * 2, images=2)


def test_own_jobs_in_full_others_as_another_user() -> None:
    queue = GenerationQueue(8)
    ann, bob, switch = Job(label("ann", "ann's castle")), Job(label("bob", "bob's secret", 128)), Job()
    with ExitStack() as stack:
        for job in (ann, bob, switch):
            stack.enter_context(queue.place(job, owner="model switch"))
        ann.set_status("running")
        ann.plan(1, 10)
        ann.advance(4)
        seen_by_bob = queue_rows(queue, "bob")
        assert [r.position for r in seen_by_bob] == [0, 1, 2]
        first, own, other = seen_by_bob
        assert first.owner == "another user" and first.prompt is None and first.progress is None
        assert first.size == "64x128" and first.images == 2 and first.status == "running" and not first.can_cancel
        assert first.mode is None and first.step is None
        assert own.mine and own.owner == "you" and own.prompt == "bob's secret" and own.size == "128x256"
        assert own.status == "queued" and own.can_cancel
        assert other.kind == "checkpoint switch" and not other.can_cancel and other.owner is None
        seen_by_ann = queue_rows(queue, "ann")
        assert seen_by_ann[0].progress == pytest.approx(0.4) and seen_by_ann[0].prompt == "ann's castle"
        assert seen_by_ann[1].prompt is None and seen_by_ann[1].owner == "another user"
        as_admin = queue_rows(queue, "root", admin=True)
        assert [r.owner for r in as_admin[:2]] == ["ann", "bob"]  # admins see whose, not what
        assert as_admin[0].prompt is None and all(r.can_cancel for r in as_admin[:2])
        assert "secret" not in str([r.to_json() for r in seen_by_ann])


def test_without_a_login_everyone_is_the_same_user() -> None:
    queue = GenerationQueue(4)
    api_job, ui_job = Job(label("")), Job(label(""))
    with queue.place(api_job), queue.place(ui_job):
        rows = queue_rows(queue, None)
        assert all(r.mine and r.can_cancel and r.prompt == "secret prompt" for r in rows)


def test_cancel_own_refuse_others_admin_may() -> None:
    queue = GenerationQueue(8)
    running, ann, bob = Job(label("ann")), Job(label("ann")), Job(label("bob"))
    with queue.place(running), queue.place(ann), queue.place(bob):
        with pytest.raises(NotAllowedError, match="another user"):
            cancel_job(queue, bob.id, "ann")
        assert not bob.interrupted
        with pytest.raises(JobNotFoundError):
            cancel_job(queue, "no-such-job", "ann")
        cancel_job(queue, ann.id, "ann")
        assert ann.interrupted
        cancel_job(queue, bob.id, "root", admin=True)
        assert bob.interrupted and not running.interrupted
        assert not queue_rows(queue, "ann")[1].can_cancel  # already cancelled


def test_a_cancelled_waiting_job_leaves_the_line() -> None:
    queue = GenerationQueue(4)
    head, waiting = Job(label("ann")), Job(label("bob"))
    left = threading.Event()
    release = threading.Event()

    def first() -> None:
        with queue.place(head) as place:
            assert queue.wait_turn(place)
            release.wait(5)

    def second() -> None:
        with queue.place(waiting) as place:
            assert not queue.wait_turn(place)  # cancelled before its turn
        left.set()

    threads = [CheckedThread(target=first), CheckedThread(target=second)]
    threads[0].start()
    while queue.running is None:
        threading.Event().wait(0.01)
    threads[1].start()
    while len(queue) < 2:
        threading.Event().wait(0.01)
    cancel_job(queue, waiting.id, "bob")
    assert left.wait(5) and len(queue) == 1
    release.set()
    for thread in threads:
        thread.join(5)


def test_job_label_reads_the_request() -> None:
    request = GenerationRequest(mode="txt2img", prompt="a boat", width=320, height=192, batch_count=3, batch_size=2)
    made = job_label(request, "ann")
    assert (made.owner, made.prompt, made.width, made.height, made.images) == ("ann", "a boat", 320, 192, 6)
    assert Job(made).label is made and Job().id != Job().id
