"""Images in, images out without generating: PNG info and the extras upscaler (``pipelines.imaging.upscale``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.metadata.infotext import parse_infotext, read_image_parameters
from pipelines.upscalers.extras import run_extras
from webui.api.checks import check_extras_request, decode_image
from webui.api.config import ApiSettings
from webui.api.mapping import encode_png, upscale_spec
from webui.api.models import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    PngInfoRequest,
    PngInfoResponse,
)


def png_info_of(
    data: str, max_pixels: int, read_extensions: Callable[[dict[str, str]], Any] | None = None
) -> dict[str, Any]:
    """The image's A1111 parameters text, parsed, and its other text chunks.

    ``read_extensions``: ``EngineHooks.read_infotext``; its values join ``parameters`` as A1111's
    ``infotext_pasted`` callbacks add theirs (sd-webui-controlnet's ``ControlNet 0 module``...).
    """
    if not data.strip():
        return {"info": "", "items": {}, "parameters": {}}
    image = decode_image(data, "image", max_pixels)
    text = read_image_parameters(image) or ""
    items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, str | int | float)}
    parameters: dict[str, Any] = parse_infotext(text) if text else {}
    if parameters and read_extensions is not None:
        parameters.update(read_extensions(parameters).values)
    return {"info": text, "items": items, "parameters": parameters}


def build_images_router(engine: Engine, settings: ApiSettings) -> APIRouter:
    router = APIRouter()
    max_pixels = settings.max_upload_pixels

    @router.post("/png-info", response_model=PngInfoResponse)
    def png_info(req: PngInfoRequest) -> dict[str, Any]:
        return png_info_of(req.image or "", max_pixels, engine.hooks.read_infotext)

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(req: ExtrasSingleImageRequest) -> dict[str, Any]:
        if not (req.image or "").strip():
            raise EaselError("image: no image given")
        spec = upscale_spec(req)
        check_extras_request([("image", req.image or "")], spec, max_pixels, engine.upscalers.names())
        result = run_extras(engine, [lambda: decode_image(req.image or "", "image", max_pixels)], spec)
        if not result.images:
            raise EaselError("the upscale was interrupted before it finished")
        return {"html_info": result.infotexts[0], "image": encode_png(result.images[0])}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(req: ExtrasBatchImagesRequest) -> dict[str, Any]:
        """Sizes checked from the headers first; then each image decoded when its turn comes (one engine turn)."""
        spec = upscale_spec(req)
        named = [(f"imageList[{i}]", f.data) for i, f in enumerate(req.imageList or [])]
        check_extras_request(named, spec, max_pixels, engine.upscalers.names())

        def source(what: str, data: str):
            return lambda: decode_image(data, what, max_pixels)

        result = run_extras(engine, [source(what, data) for what, data in named], spec)
        return {"html_info": "<br>".join(result.infotexts), "images": [encode_png(im) for im in result.images]}

    @router.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        return []

    return router
