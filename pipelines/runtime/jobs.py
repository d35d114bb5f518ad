"""Progress, live preview and interrupt/skip for one running generation.

The engine writes, the UI and API read: a ``Job`` is the only object both sides share during a generation, from
different threads. Its state changes only through its methods, under its lock, and ``snapshot()`` reads all of it
at once, so a reader never sees a step from one batch with the total or index of another.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipelines.runtime.preview import latents_to_preview

STATUSES = ("queued", "running", "done", "failed", "interrupted")


@dataclass(frozen=True)
class JobSnapshot:
    """Everything the UI and the API show about a job, read at one instant."""

    status: str
    step: int
    total_steps: int
    batch_index: int
    batch_total: int
    queue_position: int | None
    elapsed: float
    interrupted: bool
    skip_requested: bool
    preview: Image.Image | None = None  # only when asked for: making it costs a VAE-free decode of the latents

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, from the pace so far; None before the first step."""
        if self.step <= 0 or not self.total_steps:
            return None
        return self.elapsed / self.step * max(0, self.total_steps - self.step)

    @property
    def steps_per_batch(self) -> int:
        """Steps of one batch (A1111's ``sampling_steps``); 0 before the engine has planned the job."""
        return max(1, self.total_steps // max(1, self.batch_total)) if self.total_steps else 0

    @property
    def batch_step(self) -> int:
        """Steps done in the current batch (A1111's ``sampling_step``)."""
        per_batch = self.steps_per_batch
        return self.step - self.batch_index * per_batch if per_batch else self.step


@dataclass(frozen=True)
class JobLabel:
    """Who asked for a job and what it makes, for the queue everyone sees (set by the caller: UI handler, API route).

    ``owner`` is the logged-in user name; "" without a login, where everyone is the same user.
    """

    owner: str = ""
    mode: str = ""
    prompt: str = ""
    width: int = 0
    height: int = 0
    images: int = 1


class Job:
    """A generation's progress. Steps count across the whole batch so the bar and ETA cover all of it."""

    def __init__(self, label: JobLabel | None = None) -> None:
        self.id = uuid.uuid4().hex[:16]  # names the job in /easel/queue/{id}/cancel; not guessable, not secret
        self.label = label  # None: not a user's generation (a checkpoint switch taking its turn)
        self._lock = threading.Lock()
        self._status = "queued"
        self._step = 0
        self._total_steps = 0
        self._batch_index = 0
        self._batch_total = 1
        self._queue_position: int | None = None  # jobs ahead of this one while it waits in line (set by the queue)
        self._started_at = time.monotonic()
        self._preview_step = -1
        self._latents: Any = None
        self._latents_sdxl = False
        self._preview: tuple[int, Image.Image] | None = None
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._part: tuple[int, int] | None = None  # (index, count) while a script runs one part of its job
        self._part_steps = 0  # steps of the current part, as its own plan says

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"Job({s.status}, step {s.step}/{s.total_steps}, batch {s.batch_index + 1}/{s.batch_total})"

    # -- written by the engine and the queue -------------------------------------------------------------------
    def set_status(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        with self._lock:
            self._status = status

    def plan(self, batch_total: int, total_steps: int = 0) -> None:
        """How many batches, and steps across all of them (0 while unknown); the step stays within the total."""
        with self._lock:
            if self._part is not None:
                index, count = self._part
                self._batch_index, self._batch_total = index, count
                if total_steps > 0:  # while unknown, the previous part's totals keep the bar where it was
                    self._part_steps = total_steps
                    self._total_steps = count * total_steps
                    self._step = self._clamped(index * total_steps)
                return
            self._batch_total = max(1, batch_total)
            self._total_steps = max(0, total_steps)
            self._step = self._clamped(self._step)

    def start_batch(self, index: int, step: int) -> None:
        """Batch ``index`` begins, ``step`` steps into the job."""
        with self._lock:
            if self._part is None:
                self._batch_index = index
            self._step = self._clamped(self._part_offset() + step)

    def advance(self, step: int) -> None:
        """The sampler finished ``step`` steps of the whole job (never past the planned total)."""
        with self._lock:
            self._step = self._clamped(self._part_offset() + step)

    def finish_steps(self) -> None:
        """Every planned step is done (a batch may have stopped early on a skip)."""
        with self._lock:
            if self._part is not None:
                self._step = self._clamped(self._part_offset() + self._part_steps)
            else:
                self._step = self._total_steps

    @contextmanager
    def part(self, index: int, count: int) -> Iterator[None]:
        """Within the block the engine's work counts as part ``index`` of ``count`` of this job (a script's tile).

        A script that calls the engine once per part passes the same job each time; without this each call would
        plan the job anew and the bar would start over. With it the parts show as batches, steps add up across
        them (each part's steps as its own plan says), and the ETA runs from the first part's turn.
        """
        if not 0 <= index < count:
            raise ValueError(f"part {index} of {count}")
        with self._lock:
            self._part = (index, count)
            self._batch_index, self._batch_total = index, count
        try:
            yield
        finally:
            with self._lock:
                self._part = None

    def _part_offset(self) -> int:
        """Steps of the parts before the current one (0 outside a part). Called with the lock held."""
        return self._part[0] * self._part_steps if self._part is not None else 0

    def queued_at(self, position: int | None) -> None:
        """Jobs ahead of this one in line; None once it has left the line."""
        with self._lock:
            self._queue_position = position

    def start_clock(self) -> None:
        """Its turn came: the ETA counts from here, not from joining the line (or a script's first part's turn)."""
        with self._lock:
            if self._part is None or self._part[0] == 0:
                self._started_at = time.monotonic()

    def offer_latents(self, latents: Any, step: int, sdxl: bool) -> None:
        """Keep a reference to the newest latents; they become a picture only if someone looks (no per-step cost)."""
        with self._lock:
            self._latents, self._latents_sdxl, self._preview_step = latents, sdxl, step

    def _clamped(self, step: int) -> int:
        step = max(0, step)
        return min(step, self._total_steps) if self._total_steps else step

    # -- asked by the UI and the API ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop the whole job after the current step; images finished so far are kept."""
        self._interrupt.set()

    def skip(self) -> None:
        """Abandon the current batch and go on with the next."""
        self._skip.set()

    def take_skip(self) -> bool:
        """Whether a skip was asked for since the last call (each skip skips one batch)."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    # -- read by anyone ------------------------------------------------------------------------------------------
    def snapshot(self, with_preview: bool = False) -> JobSnapshot:
        """All of the job's state at one instant; the live preview too when ``with_preview``."""
        preview = self.preview if with_preview else None
        with self._lock:
            return JobSnapshot(
                status=self._status,
                step=self._step,
                total_steps=self._total_steps,
                batch_index=self._batch_index,
                batch_total=self._batch_total,
                queue_position=self._queue_position,
                elapsed=time.monotonic() - self._started_at,
                interrupted=self._interrupt.is_set(),
                skip_requested=self._skip.is_set(),
                preview=preview,
            )

    @property
    def preview(self) -> Image.Image | None:
        """The live preview of the newest latents offered, made on first request for each step.

        Made outside the lock, so the sampler's next step never waits for a reader's picture.
        """
        with self._lock:
            latents, sdxl, step, made = self._latents, self._latents_sdxl, self._preview_step, self._preview
        if latents is None:
            return None
        if made is not None and made[0] == step:
            return made[1]
        image = latents_to_preview(latents, sdxl)
        with self._lock:
            if self._preview_step == step:  # still the newest latents: keep the picture for the next reader
                self._preview = (step, image)
        return image

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skip_requested(self) -> bool:
        return self._skip.is_set()

    # Single values, each read under the lock; use ``snapshot()`` for several that must agree.
    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    @property
    def step(self) -> int:
        with self._lock:
            return self._step

    @property
    def total_steps(self) -> int:
        with self._lock:
            return self._total_steps

    @property
    def batch_index(self) -> int:
        with self._lock:
            return self._batch_index

    @property
    def batch_total(self) -> int:
        with self._lock:
            return self._batch_total

    @property
    def queue_position(self) -> int | None:
        with self._lock:
            return self._queue_position

    @property
    def started_at(self) -> float:
        with self._lock:
            return self._started_at

    @property
    def preview_step(self) -> int:
        with self._lock:
            return self._preview_step

    @property
    def fraction(self) -> float:
        return self.snapshot().fraction

    @property
    def elapsed(self) -> float:
        return self.snapshot().elapsed

    @property
    def eta(self) -> float | None:
        return self.snapshot().eta
