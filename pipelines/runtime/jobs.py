"""Progress, live preview and interrupt/skip for one running generation.

The engine writes, the UI and API read: a ``Job`` is the only object both sides share during a generation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.runtime.preview import latents_to_preview


@dataclass
class Job:
    """A generation's progress. Steps count across the whole batch so the bar and ETA cover all of it."""

    total_steps: int = 0
    step: int = 0
    batch_index: int = 0
    batch_total: int = 1
    started_at: float = field(default_factory=time.monotonic)
    preview_step: int = -1
    status: str = "queued"  # queued | running | done | failed | interrupted
    queue_position: int | None = None  # jobs ahead of this one while it waits in line (kept by the queue)
    _interrupt: threading.Event = field(default_factory=threading.Event)
    _skip: threading.Event = field(default_factory=threading.Event)
    _latents: Any = None
    _latents_sdxl: bool = False
    _preview: tuple[int, Image.Image] | None = None

    def offer_latents(self, latents: Any, step: int, sdxl: bool) -> None:
        """Keep a reference to the newest latents; they become a picture only if someone looks (no per-step cost)."""
        self._latents, self._latents_sdxl, self.preview_step = latents, sdxl, step

    @property
    def preview(self) -> Image.Image | None:
        """The live preview of the newest latents offered, made on first request for each step."""
        if self._latents is None:
            return None
        if self._preview is None or self._preview[0] != self.preview_step:
            self._preview = (self.preview_step, latents_to_preview(self._latents, self._latents_sdxl))
        return self._preview[1]

    def interrupt(self) -> None:
        """Stop the whole job after the current step; images finished so far are kept."""
        self._interrupt.set()

    def skip(self) -> None:
        """Abandon the current batch and go on with the next."""
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def take_skip(self) -> bool:
        """Whether a skip was asked for since the last call (each skip skips one batch)."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    @property
    def skip_requested(self) -> bool:
        return self._skip.is_set()

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def eta(self) -> float | None:
        """Seconds left, from the pace so far; None before the first step."""
        if self.step <= 0 or not self.total_steps:
            return None
        return self.elapsed / self.step * max(0, self.total_steps - self.step)
