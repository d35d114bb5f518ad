"""Checkpoints, samplers, schedulers and upscalers, listed in A1111's shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pipelines.generate import Engine
from pipelines.sampling.hires import LATENT_UPSCALERS
from pipelines.sampling.k_samplers import SAMPLERS
from pipelines.sampling.schedules import SCHEDULES
from webui.api.mapping import checkpoint_title
from webui.api.models import SamplerItem, SchedulerItem, SDModelItem, UpscalerItem


def sd_model_items(engine: Engine) -> list[dict[str, Any]]:
    manager = engine.manager
    items = []
    for info in manager.checkpoints:
        short = manager.hashes.cached(info.path)
        items.append(
            {
                "title": checkpoint_title(info, short),
                "model_name": info.model_name,
                "hash": short,
                "sha256": None,
                "filename": str(info.path),
                "config": None,
            }
        )
    return items


def build_models_router(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
        return sd_model_items(engine)

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        engine.manager.refresh()

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        return [spec.api_entry() for spec in SAMPLERS]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        return [schedule.api_entry() for schedule in SCHEDULES]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return engine.upscalers.items()

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": name} for name in LATENT_UPSCALERS]

    @router.post("/refresh-upscalers")
    def refresh_upscalers() -> None:
        """The folders are read on every listing; this forgets loaded models so replaced files are read again."""
        engine.upscalers.refresh()

    return router
