"""``/txt2img`` and ``/img2img``: payload -> ``Engine.generate`` -> images and A1111's ``info``; the scripts lists."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from pipelines.generate import Engine
from pipelines.runtime.jobs import Job
from pipelines.runtime.queue_view import job_label
from webui.api.config import ApiSettings
from webui.api.mapping import encode_png, generation_info, to_generation_request, value_or
from webui.api.models import GenerationFields, GenerationResponse, Img2ImgRequest, ScriptsList, Txt2ImgRequest
from webui.api.scripts import script_info as script_details
from webui.api.scripts import script_lists
from webui.users import api_user


def generate(engine: Engine, settings: ApiSettings, req: GenerationFields, mode: str, user: str = "") -> dict[str, Any]:
    """One generation in A1111's reply shape (images as raw base64 PNGs carrying their infotexts).

    ``user``: the Basic-auth login the queue shows the job under ("" without a login).
    """
    request = to_generation_request(req, mode, settings.options, settings.max_upload_pixels, engine.manager.find)
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    result = engine.generate(request, Job(job_label(request, user)))
    images = []
    if value_or(req.send_images, True):
        images = [encode_png(im, text) for im, text in zip(result.images, result.infotexts, strict=True)]
    parameters = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return {"images": images, "parameters": parameters, "info": json.dumps(generation_info(result, timestamp))}


def build_generation_router(engine: Engine, settings: ApiSettings) -> APIRouter:
    router = APIRouter()

    @router.post("/txt2img", response_model=GenerationResponse)
    def txt2img(req: Txt2ImgRequest, http: Request) -> dict[str, Any]:
        return generate(engine, settings, req, "txt2img", api_user(http))

    @router.post("/img2img", response_model=GenerationResponse)
    def img2img(req: Img2ImgRequest, http: Request) -> dict[str, Any]:
        return generate(engine, settings, req, "img2img", api_user(http))

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, list[str]]:
        return script_lists(engine.hooks)

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return script_details(engine.hooks)

    return router
