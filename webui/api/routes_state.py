"""The server's state: progress, interrupt/skip, options, memory and the command line."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from pipelines.generate import Engine
from pipelines.runtime.memory import memory_stats
from webui.api.config import ApiSettings
from webui.api.mapping import encode_png
from webui.api.models import ProgressResponse, ProgressState
from webui.api.options import read_options, write_options


def progress_info(engine: Engine, skip_current_image: bool) -> dict[str, Any]:
    """A1111's progress of the job running now (steps counted within its current batch), with its live preview."""
    entry = engine.queue.running_entry
    state = ProgressState(job_count=len(engine.queue)).model_dump()
    if entry is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
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


def build_state_router(engine: Engine, settings: ApiSettings) -> APIRouter:
    router = APIRouter()

    @router.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        return progress_info(engine, skip_current_image)

    @router.post("/interrupt")
    def interrupt() -> dict[str, Any]:
        """As A1111: stops the job running now (the UI's buttons stop only their own user's job)."""
        if job := engine.queue.running:
            job.interrupt()
        return {}

    @router.post("/skip")
    def skip() -> dict[str, Any]:
        if job := engine.queue.running:
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
