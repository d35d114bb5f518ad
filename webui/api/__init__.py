"""The AUTOMATIC1111-compatible REST API, ``/sdapi/v1/*``: payloads in, ``GenerationRequest`` out, and back.

No generation logic lives here. Field names, defaults and response shapes follow A1111's API so existing clients
(``webuiapi``, scripts, Krita/Photoshop plug-ins) work unchanged: unknown fields and nulls are accepted, images
come in as base64 with or without a ``data:`` prefix and go out as raw base64 PNG, ``info`` is a JSON string.
Errors a user can cause are JSON 4xx (422 for validation, 413 too large, 429 when the queue is full), never a 500.

Modules: ``models`` (pydantic request/response shapes), ``mapping`` (payload <-> engine), ``checks`` (body and
size limits), ``options`` (``/options`` <-> engine settings), ``errors`` (handlers), ``routes_*`` (one router
per topic), ``config`` (``ApiSettings``).
"""

from __future__ import annotations

from fastapi import APIRouter

from webui.api.checks import MAX_REQUEST_PIXELS
from webui.api.config import ApiSettings, public_cmd_flags
from webui.api.errors import install_error_handlers
from webui.api.routes_generation import build_generation_router
from webui.api.routes_images import build_images_router
from webui.api.routes_models import build_models_router
from webui.api.routes_networks import build_networks_router
from webui.api.routes_state import build_state_router
from webui.context import AppContext

PREFIX = "/sdapi/v1"
__all__ = [
    "MAX_REQUEST_PIXELS",
    "PREFIX",
    "ApiSettings",
    "build_api_router",
    "install_error_handlers",
    "public_cmd_flags",
]


def build_api_router(ctx: AppContext, settings: ApiSettings) -> APIRouter:
    """All ``/sdapi/v1`` routes over one context. Synchronous handlers run in FastAPI's thread pool."""
    engine = ctx.engine
    router = APIRouter(prefix=PREFIX, tags=["sdapi"])
    router.include_router(build_generation_router(engine, settings))
    router.include_router(build_state_router(engine, settings, ctx.is_admin))
    router.include_router(build_models_router(engine))
    router.include_router(build_networks_router(engine))
    router.include_router(build_images_router(engine, settings))
    return router
