"""sd-webui-controlnet's REST routes, with its shapes (served under ``/controlnet/``, behind the app's login).

``GET version``, ``model_list``, ``module_list`` (with ``module_detail``), ``control_types``, ``settings``;
``POST detect`` runs a preprocessor on base64 images. Images are only ever base64 here, never server paths.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pipelines.errors import EaselError

from . import annotators, preprocessors
from .control import ControlNetRuntime, list_models
from .control_types import control_types as control_types_for
from .units import load_image, load_mask

VERSION = 3
MAX_DETECT_IMAGES = 16


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[Any] = Field(default_factory=list)
    controlnet_processor_res: int = 512
    # -1: the module's own default (a fixed 64 would be off the scale of e.g. normal_midas's 0-1 background threshold)
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[Any] | None = None
    low_vram: bool = False


def _png_base64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_router(runtime: ControlNetRuntime) -> APIRouter:
    router = APIRouter()

    @router.get("/version")
    def version() -> dict[str, int]:
        return {"version": VERSION}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        return {"model_list": [m.label for m in list_models(runtime.folders())]}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        detail = {name: pre.detail() for name, pre in preprocessors.PREPROCESSORS.items()}
        detail |= annotators.LIBRARY.details()  # those whose weights are in models/annotators/ now
        names = list(detail)
        return {"module_list": names, "module_detail": detail}

    @router.get("/control_types")
    def control_types() -> dict[str, Any]:
        return {"control_types": control_types_for([m.label for m in list_models(runtime.folders())])}

    @router.get("/settings")
    def settings() -> dict[str, int]:
        """The units this server runs (its start-up value of the setting); older clients read the older key."""
        return {"control_net_unit_count": runtime.unit_count, "control_net_max_models_num": runtime.unit_count}

    @router.post("/detect")
    def detect(body: DetectRequest) -> dict[str, Any]:
        if not body.controlnet_input_images:
            raise EaselError("controlnet_input_images: give at least one base64 image")
        if len(body.controlnet_input_images) > MAX_DETECT_IMAGES:
            raise EaselError(f"controlnet_input_images: at most {MAX_DETECT_IMAGES} images per request")
        preprocessors.find(body.controlnet_module)
        masks = body.controlnet_masks or []
        if len(masks) > len(body.controlnet_input_images):
            raise EaselError("controlnet_masks: at most one mask per input image")
        images = []
        for i, value in enumerate(body.controlnet_input_images):
            image = load_image(value, f"controlnet_input_images[{i}]")
            if image is None:
                raise EaselError(f"controlnet_input_images[{i}]: empty")
            mask = load_mask({"mask": masks[i]}, f"controlnet_masks[{i}]") if i < len(masks) else None
            detected = preprocessors.run(
                body.controlnet_module,
                image,
                body.controlnet_processor_res,
                body.controlnet_threshold_a,
                body.controlnet_threshold_b,
                mask,
            )
            images.append(_png_base64(detected))
        return {"images": images, "info": "Success"}

    return router
