"""The queue as each user may see it: their own jobs in full, everyone else's as "another user", position and size.

One set of rules for the UI's queue panel and ``/easel/queue``: what a viewer learns of a job and whether they may
cancel it is decided here, never in the adapters. Without a login every job and every viewer has the owner "",
so everyone is the same user and sees (and may cancel) everything, as on a single-user machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.errors import EaselError
from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import JobLabel
from pipelines.runtime.queue import GenerationQueue, QueueEntry

ANOTHER_USER = "another user"
PROMPT_SHOWN = 200  # characters of one's own prompt the queue shows; the rest is in the tab that made it


class JobNotFoundError(EaselError):
    """No job with that id is in line (it finished, or never was): the API answers 404."""


class NotAllowedError(EaselError):
    """What this user may not do (cancel another user's job, empty the trash without being an admin): a 403."""


def job_label(request: GenerationRequest, owner: str | None) -> JobLabel:
    """What the queue shows of a request, read before it runs (the prompt as typed, before styles)."""
    return JobLabel(
        owner=owner or "",
        mode=request.mode,
        prompt=request.prompt,
        width=int(request.width),
        height=int(request.height),
        images=max(1, int(request.batch_count) * int(request.batch_size)),
    )


@dataclass(frozen=True)
class QueueRow:
    """One job in line as one viewer may see it; ``prompt``, ``owner`` and progress are None where hidden."""

    id: str
    position: int  # 0: on the device now (or next), 1: one job ahead of it, ...
    status: str  # "queued" or "running"
    kind: str  # "generation", or "checkpoint switch" (no user's job: it only takes a turn)
    mine: bool
    owner: str | None  # "you", the user name (admins only), or "another user"
    mode: str | None
    prompt: str | None
    width: int
    height: int
    images: int
    step: int | None
    total_steps: int | None
    progress: float | None
    can_cancel: bool

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else ""

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "size": self.size}


def _row(entry: QueueEntry, position: int, viewer: str, admin: bool) -> QueueRow:
    job, label = entry.job, entry.job.label
    snapshot = job.snapshot()
    status = "running" if snapshot.status == "running" else "queued"
    if label is None:  # a checkpoint switch waiting for its turn: nobody's to cancel
        return QueueRow(
            job.id, position, status, "checkpoint switch", False, None, None, None, 0, 0, 0, None, None, None, False
        )
    mine = label.owner == viewer
    if mine:
        owner: str | None = "you"
    else:
        owner = (label.owner or ANOTHER_USER) if admin else ANOTHER_USER
    shown = mine  # the prompt and progress: the owner's business
    return QueueRow(
        id=job.id,
        position=position,
        status=status,
        kind="generation",
        mine=mine,
        owner=owner,
        mode=label.mode if shown else None,
        prompt=label.prompt[:PROMPT_SHOWN] if shown else None,
        width=label.width,
        height=label.height,
        images=label.images,
        step=snapshot.step if shown else None,
        total_steps=snapshot.total_steps if shown else None,
        progress=snapshot.fraction if shown else None,
        can_cancel=(mine or admin) and not snapshot.interrupted,
    )


def queue_rows(queue: GenerationQueue, viewer: str | None, admin: bool = False) -> list[QueueRow]:
    """Every job in line, first (running or next) first, as ``viewer`` ("" without a login) may see it."""
    return [_row(entry, index, viewer or "", admin) for index, entry in enumerate(queue.entries())]


def cancel_job(queue: GenerationQueue, job_id: str, viewer: str | None, admin: bool = False) -> QueueRow:
    """Cancel a job in line: one waiting leaves the line, one running stops after its current step.

    Raises JobNotFoundError when no such job is in line, NotAllowedError when it is someone else's and the viewer
    is not an admin. The row returned is the job as the viewer saw it just before.
    """
    entries = queue.entries()
    found = next(((i, e) for i, e in enumerate(entries) if e.job.id == job_id), None)
    if found is None:
        raise JobNotFoundError(f"no job {job_id[:40]!r} is in the queue (it may have finished already)")
    position, entry = found
    row = _row(entry, position, viewer or "", admin)
    if row.kind != "generation":
        raise NotAllowedError("a checkpoint switch cannot be cancelled; it takes only a moment")
    if not (row.mine or admin):
        raise NotAllowedError("this job belongs to another user; only they or an admin can cancel it")
    entry.job.interrupt()
    return row
