"""The server's state: progress, interrupt/skip, options, memory and the command line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from pipelines.generate import Engine
from pipelines.runtime.memory import memory_stats
from pipelines.runtime.queue import QueueEntry
from pipelines.runtime.queue_view import NotAllowedError
from webui.api.config import ApiSettings
from webui.api.mapping import encode_png
from webui.api.models import ProgressResponse, ProgressState
from webui.api.options import read_options, write_options
from webui.users import api_user


def owns(entry: QueueEntry, user: str, admin: bool) -> bool:
    """Whether ``user`` may see and stop this job: their own or, for an admin, anyone's.

    ``user`` is "" when the server has no logins: then everyone is the same user.
    """
    return admin or not user or entry.owner == user


def progress_info(engine: Engine, skip_current_image: bool, user: str = "", admin: bool = True) -> dict[str, Any]:
    """A1111's progress of the job running now (steps counted within its current batch), with its live preview.

    Another user's job shows only that the server is busy: its prompt, preview and progress are that user's business,
    as in the queue panel.
    """
    entry = engine.queue.running_entry
    state = ProgressState(job_count=len(engine.queue)).model_dump()
    if entry is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    if not owns(entry, user, admin):
        state.update(job="another user's job")
        textinfo = "Another user's job is running; yours waits in line"
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": textinfo}
    job = entry.job.snapshot(with_preview=not skip_current_image)  # one instant: step, batch and total agree
    state.update(
        job=f"job {job.batch_index + 1}/{job.batch_total}",
        job_no=job.batch_index,
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(entry.joined_at)),
        sampling_step=job.batch_step,
        sampling_steps=job.steps_per_batch,
        interrupted=job.interrupted,
        skipped=job.skip_requested,
    )
    return {
        "progress": job.fraction,
        "eta_relative": job.eta or 0.0,
        "state": state,
        "current_image": encode_png(job.preview) if job.preview is not None else None,
        "textinfo": None,
    }


def build_state_router(
    engine: Engine, settings: ApiSettings, is_admin: Callable[[str], bool] = lambda _user: False
) -> APIRouter:
    router = APIRouter()

    @router.get("/progress", response_model=ProgressResponse)
    def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
        user = api_user(request)
        return progress_info(engine, skip_current_image, user, is_admin(user))

    def own_running(request: Request, verb: str) -> Any:
        """The running job if the caller may stop it (A1111 stops whatever runs; a shared server stops one's own)."""
        entry = engine.queue.running_entry
        if entry is None:
            return None
        user = api_user(request)
        if not owns(entry, user, is_admin(user)):
            raise NotAllowedError(f"the job running now belongs to another user; only they or an admin can {verb} it")
        return entry.job

    @router.post("/interrupt")
    def interrupt(request: Request) -> dict[str, Any]:
        """Stops the caller's job running now; 403 when another user's runs (the UI's buttons act the same)."""
        if job := own_running(request, "interrupt"):
            job.interrupt()
        return {}

    @router.post("/skip")
    def skip(request: Request) -> dict[str, Any]:
        if job := own_running(request, "skip"):
            job.skip()
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return read_options(engine, settings.store)

    @router.post("/options")
    def set_options(options: dict[str, Any]) -> None:
        """``sd_model_checkpoint`` switches the model (after the running job); other keys are kept and echoed."""
        write_options(engine, settings.store, options)

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return settings.cmd_flags

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        """A1111's ``ram`` and ``cuda`` numbers, and Easel's memory policy: the mode chosen last and why."""
        return {**memory_stats(engine.manager.device), "policy": engine.manager.memory.status()}

    return router
