"""The one line every generation stands in, whoever asked (UI or API): first come, first served, bounded.

The device lock already makes generations exclusive; the queue adds what a lock cannot give: a fair order,
a limit on how many may wait, and each waiting job's place in line, so every user can see how many are ahead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipelines.errors import EaselError
from pipelines.runtime.jobs import Job

DEFAULT_QUEUE_SIZE = 32
_POLL_SECONDS = 0.2


@dataclass
class QueueEntry:
    job: Job
    owner: str
    joined_at: float = field(default_factory=time.time)


class QueueFullError(EaselError):
    """More jobs than the queue holds: try again later (the API answers 429)."""


class GenerationQueue:
    """A bounded FIFO of jobs; the head is the one allowed on the device."""

    def __init__(self, max_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if max_size < 1:
            raise ValueError("queue size must be at least 1")
        self.max_size = max_size
        self._entries: list[QueueEntry] = []
        self._running: QueueEntry | None = None
        self._changed = threading.Condition()

    @contextmanager
    def place(self, job: Job, owner: str = "") -> Iterator[QueueEntry]:
        """Join the line (EaselError when it is full); leaving the block frees the place, whatever happened.

        ``owner``: who waits, when the job's own label does not say (the label's user name wins).
        """
        entry = QueueEntry(job, job.label.owner if job.label is not None else owner)
        with self._changed:
            if len(self._entries) >= self.max_size:
                raise QueueFullError(
                    f"the queue is full ({self.max_size} jobs waiting or running); try again in a moment"
                )
            self._entries.append(entry)
            self._renumber()
        try:
            yield entry
        finally:
            with self._changed:
                self._entries.remove(entry)
                entry.job.queued_at(None)
                if self._running is entry:
                    self._running = None
                self._renumber()

    def wait_turn(self, entry: QueueEntry) -> bool:
        """Block until ``entry`` is first in line; False when its job was interrupted while it waited."""
        with self._changed:
            while self._entries[0] is not entry:
                if entry.job.interrupted:
                    return False
                self._changed.wait(_POLL_SECONDS)
            self._running = entry
            entry.job.start_clock()  # the ETA counts from the turn, not from joining the line
            return True

    def _renumber(self) -> None:
        """Tell every waiting job how many are ahead of it, and wake the waiters. Called with the lock held."""
        for index, waiting in enumerate(self._entries):
            waiting.job.queued_at(index)
        self._changed.notify_all()

    # -- what the UI and the API show -------------------------------------------------------------------
    def position(self, job: Job) -> int | None:
        """How many jobs are ahead of this one (0: it is next or running); None when it is not in line."""
        with self._changed:
            for index, entry in enumerate(self._entries):
                if entry.job is job:
                    return index
        return None

    @property
    def running(self) -> Job | None:
        """The job on the device now, if any."""
        with self._changed:
            return self._running.job if self._running else None

    @property
    def running_entry(self) -> QueueEntry | None:
        with self._changed:
            return self._running

    def __len__(self) -> int:
        """Jobs waiting or running."""
        with self._changed:
            return len(self._entries)

    def jobs(self) -> list[Job]:
        with self._changed:
            return [entry.job for entry in self._entries]

    def entries(self) -> list[QueueEntry]:
        """Everyone in line, in order (the first one is running or next), read at one instant."""
        with self._changed:
            return list(self._entries)

    def find(self, job_id: str) -> QueueEntry | None:
        """The entry whose job has this id, while it is in line."""
        with self._changed:
            return next((entry for entry in self._entries if entry.job.id == job_id), None)
