"""Runs an engine call in a worker thread and streams its progress to the browser.

UI plumbing only: the generation itself is ``Engine.generate``.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import gradio as gr

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.requests import GenerationRequest, GenerationResult
from pipelines.runtime.jobs import Job, JobLabel

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25


@dataclass
class JobRegistry:
    """Each browser session's current job, so Interrupt and Skip reach the caller's own job only."""

    _jobs: dict[str, Job] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, session: str, label: JobLabel | None = None) -> Job:
        job = Job(label)
        with self._lock:
            self._jobs[session] = job
        return job

    def get(self, session: str) -> Job | None:
        with self._lock:
            return self._jobs.get(session)

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def progress_html(job: Job) -> str:
    """A progress bar with step count and ETA, from one snapshot (the engine updates the job meanwhile)."""
    now = job.snapshot()
    if now.status == "queued":
        ahead = now.queue_position
        where = f": {ahead} ahead of you" if ahead else (": you are next" if ahead == 0 else "")
        return f"<div class='easel-progress'>Waiting in line{where}…</div>"
    percent = round(now.fraction * 100)
    eta = now.eta
    eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
    batch = f" · batch {now.batch_index + 1}/{now.batch_total}" if now.batch_total > 1 else ""
    label = html.escape(f"{percent}% · step {now.step}/{now.total_steps}{batch}{eta_text}")
    return (
        "<div class='easel-progress'><div class='easel-progress-bar' "
        f"style='width:{percent}%'></div><span>{label}</span></div>"
    )


def stream_generation(
    engine: Engine, request: GenerationRequest, job: Job
) -> Iterator[tuple[Job, GenerationResult | None]]:
    """Yield (job, None) while the engine works, then (job, result). Errors become gr.Error for the user."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = engine.generate(request, job)
        except EaselError as exc:
            box["error"] = str(exc)
        except Exception as exc:  # the server must keep running whatever happened
            log.exception("generation failed")
            box["error"] = f"generation failed: {type(exc).__name__}: {exc}"

    thread = threading.Thread(target=work, name="easel-generate", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        if thread.is_alive():
            yield job, None
    if "error" in box:
        raise gr.Error(str(box["error"]))
    yield job, box["result"]  # type: ignore[misc]
