"""The AUTOMATIC1111-compatible REST API, ``/sdapi/v1/*``: payloads in, ``GenerationRequest`` out, and back.

No generation logic lives here. Field names, defaults and response shapes follow A1111's API so existing clients
(``webuiapi``, scripts, Krita/Photoshop plug-ins) work unchanged: unknown fields and nulls are accepted, images
come in as base64 with or without a ``data:`` prefix and go out as raw base64 PNG, ``info`` is a JSON string.
Errors a user can cause are JSON 4xx (422 for validation, 429 when the queue is full), never a 500.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.errors import EaselError
from pipelines.generate import VERSION
from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS, load_user_image, user_image_size
from pipelines.metadata.infotext import parse_infotext, read_image_parameters
from pipelines.metadata.infotext_request import request_from_infotext, resolve_checkpoint
from pipelines.models.devices import available_ram_bytes
from pipelines.requests import GenerationRequest, GenerationResult
from pipelines.runtime.jobs import Job
from pipelines.runtime.queue import QueueFullError
from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES
from webui.context import AppContext

PREFIX = "/sdapi/v1"
UPSCALERS = ("None", "Lanczos", "Nearest")
_RESAMPLE = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_EXTRAS_PIXELS = 4096 * 4096
MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_UPLOAD_PIXELS
"""Decoded pixels all the images of one request may add up to (an init image and its mask at the largest size):
twenty solid 4096x4096 PNGs are 1.6 MB on the wire and 1.3 GB decoded. Counted from the headers, before decoding."""
MAX_EXTRAS_RESULT_PIXELS = 4 * MAX_EXTRAS_PIXELS
"""Pixels all the upscaled results of one extras request may add up to: they are all held until the reply is sent."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects a request body may have; A1111 payloads need a handful of levels."""
MAX_OPTION_KEYS = 1000  # A1111 itself has about 600 settings
MAX_OPTION_KEY_LENGTH = 128
MAX_OPTION_VALUE_BYTES = 64 * 1024
MAX_OPTIONS_BYTES = 1024 * 1024
"""POST /options keeps what it is sent, in memory, for the life of the server: bounded in count and size."""
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


@dataclass
class ApiSettings:
    """What the API needs besides the engine: folders to list, limits, and the command line to report."""

    models_dir: Path = Path("models")
    embeddings_dir: Path = Path("embeddings")
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    cmd_flags: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # options set through POST /options, echoed back


class RequestTooLargeError(EaselError):
    """A request whose images, results or settings exceed a size limit (the API answers 413)."""


def _json_number_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def unusable_json(value: Any, where: str = "") -> str | None:
    """Why a parsed JSON value cannot be used, or None: NaN/Infinity anywhere, or nesting deeper than MAX_JSON_DEPTH.

    Python's json accepts the NaN and Infinity literals; past validation they crashed ``int()`` or the JSON reply
    (a 500), and deep nesting overflowed the recursive encoders. Walked with an explicit stack, never recursion.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            name = _json_number_name(item)
            return f"{path or 'the body'} is {name}: NaN and Infinity are not numbers Easel can use"
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"{path or 'the body'} is nested more than {MAX_JSON_DEPTH} levels deep"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, f"{path}.{key}" if path else str(key), depth + 1) for key, child in children)
    return None


# -- request models (A1111 names and defaults) ---------------------------------------------------------------
class A1111Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _usable_json(cls, data: Any) -> Any:
        """Refuse NaN, Infinity and deep nesting in any field, declared or extra, before fields are read."""
        problem = unusable_json(data)
        if problem:
            raise ValueError(problem)
        return data


class _GenerationFields(A1111Model):
    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    comments: dict[str, Any] | None = None
    sampler_index: str | None = Field(default="Euler", description="deprecated: use sampler_name")
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class Txt2ImgRequest(_GenerationFields):
    enable_hr: bool | None = False
    denoising_strength: float | None = None
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None


class Img2ImgRequest(_GenerationFields):
    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    denoising_strength: float | None = 0.75
    include_init_images: bool | None = False
    force_task_id: str | None = None


class PngInfoRequest(A1111Model):
    image: str | None = ""


class ExtrasBase(A1111Model):
    resize_mode: int | None = 0
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = 0
    codeformer_visibility: float | None = 0
    codeformer_weight: float | None = 0
    upscaling_resize: float | None = 2
    upscaling_resize_w: int | None = 512
    upscaling_resize_h: int | None = 512
    upscaling_crop: bool | None = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float | None = 0
    upscale_first: bool | None = False


class ExtrasSingleImageRequest(ExtrasBase):
    image: str | None = ""


class FileData(A1111Model):
    data: str
    name: str | None = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[FileData] | None = None  # noqa: N815 (A1111's name)


# -- response models (for /docs; handlers return plain dicts of the same shape) -----------------------------
class GenerationResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class ProgressState(A1111Model):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class VaeItem(BaseModel):
    model_name: str
    filename: str


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, dict[str, Any]]
    skipped: dict[str, dict[str, Any]]


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


# -- conversions -------------------------------------------------------------------------------------------
def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Raw base64 of a PNG (no data: prefix), carrying the infotext as A1111's API images do."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _value(value: Any, default: Any) -> Any:
    return default if value is None else value


def schedule_label(name: str | None) -> str:
    """A1111 scheduler name ("sgm_uniform") or label ("SGM Uniform") -> our label; unknown names pass through."""
    if not name:
        return "Automatic"
    wanted = name.replace("_", " ").strip().lower()
    return next((s for s in SCHEDULE_TYPES if s.lower() == wanted), name)


def schedule_name(label: str) -> str:
    return label.lower().replace(" ", "_")


def _unsupported(req: _GenerationFields) -> None:
    if req.script_name:
        raise EaselError(f"script '{req.script_name}' not found: Easel has no scripts")
    if getattr(req, "enable_hr", False) and "enable_hr" not in _REQUEST_FIELDS:
        raise EaselError("hires. fix (enable_hr) is not available in this version")


# A1111 fields that map 1:1 onto GenerationRequest fields of the same name, passed on when the engine has them.
_SAME_NAME_FIELDS = (
    "enable_hr",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
)
_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationRequest))


def _decode(data: str, what: str, max_pixels: int) -> Image.Image:
    try:
        return load_user_image(data, max_pixels)
    except EaselError as exc:
        raise EaselError(f"{what}: {exc}") from exc


def _header_size(data: str, what: str, max_pixels: int) -> tuple[int, int]:
    try:
        return user_image_size(data, max_pixels)
    except EaselError as exc:
        raise EaselError(f"{what}: {exc}") from exc


def check_pixel_budget(images: Sequence[tuple[str, str]], limit: int, max_pixels: int) -> list[tuple[int, int]]:
    """Each ``(name, base64)`` image's size, from its header; RequestTooLargeError once they add up past ``limit``.

    Called before any of them is decoded, so a request of many small files that decode huge costs nothing. Each
    image alone is held to ``max_pixels`` first (EaselError, as when it is decoded).
    """
    sizes: list[tuple[int, int]] = []
    total = 0
    for what, data in images:
        width, height = _header_size(data, what, max_pixels)
        total += width * height
        if total > limit:
            raise RequestTooLargeError(
                f"{what} ({width}x{height}) brings this request to {total:,} decoded pixels; at most {limit:,} are "
                "allowed per request. Send fewer or smaller images, in several requests."
            )
        sizes.append((width, height))
    return sizes


def to_generation_request(
    req: _GenerationFields, mode: str, defaults: dict[str, Any], max_pixels: int, find_checkpoint: Any = None
) -> GenerationRequest:
    """A1111 payload -> GenerationRequest (which validates ranges itself)."""
    _unsupported(req)
    overrides = req.override_settings or {}
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise EaselError("override_settings.sd_model_checkpoint must be a checkpoint name")
    clip_skip = overrides.get("CLIP_stop_at_last_layers", defaults.get("CLIP_stop_at_last_layers", 1))
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int | float):
        raise EaselError("CLIP_stop_at_last_layers must be a number")
    if not math.isfinite(clip_skip) or clip_skip != int(clip_skip):  # int(inf) raised OverflowError: a 500
        raise EaselError(f"CLIP_stop_at_last_layers must be a whole number from 1 to 12 (got {clip_skip})")
    kwargs: dict[str, Any] = {
        "mode": mode,
        "prompt": _value(req.prompt, ""),
        "negative_prompt": _value(req.negative_prompt, ""),
        "checkpoint": checkpoint or None,
        "sampler": req.sampler_name or req.sampler_index or "Euler",
        "schedule_type": schedule_label(req.scheduler),
        "steps": _value(req.steps, 50),
        "cfg_scale": _value(req.cfg_scale, 7.0),
        "width": _value(req.width, 512),
        "height": _value(req.height, 512),
        "seed": _value(req.seed, -1),
        "batch_count": _value(req.n_iter, 1),
        "batch_size": _value(req.batch_size, 1),
        "clip_skip": int(clip_skip),
        "save": bool(req.save_images) and not req.do_not_save_samples,
    }
    for name in _SAME_NAME_FIELDS:
        value = getattr(req, name, None)
        if name.startswith("seed_resize_from") and (value is None or value <= 0):
            continue  # A1111 sends -1 for "off"
        if value is not None and name in _REQUEST_FIELDS:
            kwargs[name] = value
    if isinstance(req, Txt2ImgRequest) and req.denoising_strength is not None:
        kwargs["denoising_strength"] = req.denoising_strength  # the hires pass's strength
    if "hr_scheduler" in kwargs:
        kwargs["hr_scheduler"] = schedule_label(kwargs["hr_scheduler"])
    if req.styles and "styles" in _REQUEST_FIELDS:
        kwargs["styles"] = tuple(req.styles)
    vae = overrides.get("sd_vae")
    if isinstance(vae, str) and vae and "vae" in _REQUEST_FIELDS:
        kwargs["vae"] = vae
    if isinstance(req, Img2ImgRequest):
        if not req.init_images:
            raise EaselError("init_images: give at least one image (base64 PNG, JPEG or WebP)")
        sent = [("init_images[0]", req.init_images[0])] + ([("mask", req.mask)] if req.mask else [])
        check_pixel_budget(sent, MAX_REQUEST_PIXELS, max_pixels)  # both, from their headers, before decoding either
        kwargs["init_image"] = _decode(req.init_images[0], "init_images[0]", max_pixels)
        kwargs["denoising_strength"] = _value(req.denoising_strength, 0.75)
        kwargs["resize_mode"] = _value(req.resize_mode, 0)
        if req.mask:
            kwargs["mode"] = "inpaint"
            kwargs["mask"] = _decode(req.mask, "mask", max_pixels)
            kwargs["mask_blur"] = req.mask_blur if req.mask_blur is not None else _value(req.mask_blur_x, 4)
            kwargs["inpainting_fill"] = _value(req.inpainting_fill, 0)
            kwargs["inpaint_full_res"] = bool(_value(req.inpaint_full_res, True))
            kwargs["inpaint_full_res_padding"] = _value(req.inpaint_full_res_padding, 0)
            kwargs["inpainting_mask_invert"] = bool(req.inpainting_mask_invert)
    if req.infotext:
        kwargs = _fill_from_infotext(kwargs, req, req.infotext, find_checkpoint)
    return GenerationRequest(**kwargs)


# GenerationRequest field -> the A1111 payload field that sets it, where the names differ
_PAYLOAD_NAMES = {"sampler": "sampler_name", "schedule_type": "scheduler", "batch_count": "n_iter"}


def _fill_from_infotext(
    kwargs: dict[str, Any], req: _GenerationFields, infotext: str, find_checkpoint: Any
) -> dict[str, Any]:
    """A1111's ``infotext`` field: every field the payload left unset takes the infotext's value."""
    parsed = request_from_infotext(infotext)
    given = req.model_fields_set
    merged = dict(kwargs)
    for name, value in parsed.kwargs.items():
        if name == "clip_skip":
            if "CLIP_stop_at_last_layers" not in (req.override_settings or {}):
                merged[name] = value
        elif _PAYLOAD_NAMES.get(name, name) not in given:
            merged[name] = value
    if merged.get("checkpoint") is None and find_checkpoint is not None:
        merged["checkpoint"] = resolve_checkpoint(find_checkpoint, parsed.model_name, parsed.model_hash)
    return merged


def generation_info(result: GenerationResult, req: _GenerationFields, timestamp: str) -> dict[str, Any]:
    """A1111's ``info`` object (returned as a JSON string)."""
    request = result.request
    n = len(result.seeds)
    return {
        "warnings": result.warnings,  # Easel's addition: missing LoRAs/embeddings, settings the mode ignores
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * n,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * n,
        "seed": result.seeds[0] if result.seeds else request.seed,
        "all_seeds": result.seeds,
        "subseed": result.seeds[0] if result.seeds else request.seed,
        "all_subseeds": result.seeds,
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "scheduler": request.schedule_type,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if request.mode != "txt2img" else None,
        "extra_generation_params": dict(request.extra_params),
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "styles": req.styles or [],
        "job_timestamp": timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": request.mode == "inpaint",
        "version": VERSION,
        "interrupted": result.interrupted,
    }


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(found, key=lambda p: p.as_posix().lower())


def _embedding_shape(path: Path) -> dict[str, Any] | None:
    """Shape and vector count from a safetensors header (pickles are never opened)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        if not keys:
            return None
        shape = handle.get_slice(keys[0]).get_shape()
    return {"vectors": shape[0] if len(shape) > 1 else 1, "shape": shape[-1]}


def _upscaler_names(req: ExtrasBase) -> tuple[str, str]:
    names = (req.upscaler_1 or "None", req.upscaler_2 or "None")
    for name in names:
        if name not in UPSCALERS:
            raise EaselError(f"unknown upscaler '{name}'; available: {', '.join(UPSCALERS)}")
    return names


def upscaled_size(width: int, height: int, req: ExtrasBase) -> tuple[int, int]:
    """The size an extras request makes of a ``width`` x ``height`` image (checked; known before decoding it)."""
    mode = _value(req.resize_mode, 0)
    if mode == 0:
        factor = float(_value(req.upscaling_resize, 2))
        if not 0 < factor <= 8:
            raise EaselError(f"upscaling_resize must be between 0 and 8 (got {factor:g})")
        new_width, new_height = round(width * factor), round(height * factor)
    elif mode == 1:
        new_width, new_height = int(_value(req.upscaling_resize_w, 512)), int(_value(req.upscaling_resize_h, 512))
    else:
        raise EaselError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {mode}")
    if new_width < 1 or new_height < 1 or new_width * new_height > MAX_EXTRAS_PIXELS:
        raise EaselError(
            f"the result would be {new_width}x{new_height} pixels; at most {MAX_EXTRAS_PIXELS:,} are allowed"
        )
    return new_width, new_height


def check_extras_request(images: Sequence[tuple[str, str]], req: ExtrasBase, max_pixels: int) -> None:
    """Every image's size and its result's, from the headers: refused before any pixel is decoded."""
    _upscaler_names(req)
    sizes = check_pixel_budget(images, MAX_REQUEST_PIXELS, max_pixels)
    results = 0
    for (what, _), (width, height) in zip(images, sizes, strict=True):
        new_width, new_height = upscaled_size(width, height, req)
        results += new_width * new_height
        if results > MAX_EXTRAS_RESULT_PIXELS:
            raise RequestTooLargeError(
                f"{what} brings this request's results to {results:,} pixels; at most {MAX_EXTRAS_RESULT_PIXELS:,} "
                "are allowed per request. Upscale fewer images at a time."
            )


def upscale(image: Image.Image, req: ExtrasBase) -> Image.Image:
    """A1111's extras resize: by a factor or to a size (cropped to fit), with up to two blended upscalers."""
    names = _upscaler_names(req)
    width, height = upscaled_size(image.width, image.height, req)
    crop = _value(req.resize_mode, 0) == 1 and bool(_value(req.upscaling_crop, True))

    def resized(name: str) -> Image.Image:
        resample = _RESAMPLE.get(name, Image.Resampling.LANCZOS)
        if not crop:
            return image.resize((width, height), resample)
        scale = max(width / image.width, height / image.height)
        big = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), resample)
        left, top = (big.width - width) // 2, (big.height - height) // 2
        return big.crop((left, top, left + width, top + height))

    first = resized(names[0])
    visibility = float(_value(req.extras_upscaler_2_visibility, 0))
    if names[1] != "None" and visibility > 0:
        second = resized(names[1])
        first = Image.blend(first.convert("RGB"), second.convert("RGB"), min(1.0, visibility))
    return first


def _error(status: int, error: str, detail: Any, errors: Any = "") -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=jsonable_encoder({"error": error, "detail": detail, "body": "", "errors": errors or detail}),
    )


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, without the "Value error, " it puts before the ones our validators raise."""
    return str(error.get("msg", "")).removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    """EaselError -> 422, a full queue -> 429, too large -> 413, bad JSON / wrong types -> 422; A1111's error shape."""

    async def easel_error(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, QueueFullError):
            return _error(429, "QueueFull", str(exc))
        if isinstance(exc, RequestTooLargeError):
            return _error(413, "RequestTooLarge", str(exc))
        return _error(422, "EaselError", str(exc))

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        # Only where and what: pydantic's ``input``/``ctx`` echo the body, and a NaN or a deep list there made the
        # error reply itself fail (a 500).
        raw = exc.errors() if isinstance(exc, RequestValidationError) else []
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e), "type": e.get("type")} for e in raw]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return _error(422, "RequestValidationError", detail or str(exc), errors)

    app.add_exception_handler(EaselError, easel_error)
    app.add_exception_handler(RequestValidationError, validation_error)


# -- the routes --------------------------------------------------------------------------------------------
def build_api_router(ctx: AppContext, settings: ApiSettings) -> APIRouter:
    """All ``/sdapi/v1`` routes over one context. Synchronous handlers run in FastAPI's thread pool."""
    router = APIRouter(prefix=PREFIX, tags=["sdapi"])
    engine = ctx.engine
    manager = engine.manager

    def checkpoint_title(info: Any, short_hash: str | None) -> str:
        return f"{info.name} [{short_hash}]" if short_hash else info.name

    def active_title() -> str | None:
        active = manager.active
        return checkpoint_title(active.info, active.hash) if active else None

    def run(req: _GenerationFields, mode: str) -> dict[str, Any]:
        request = to_generation_request(req, mode, settings.options, settings.max_upload_pixels, manager.find)
        timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        result = engine.generate(request, Job())
        images = []
        if _value(req.send_images, True):
            images = [encode_png(im, text) for im, text in zip(result.images, result.infotexts, strict=True)]
        parameters = req.model_dump()
        if isinstance(req, Img2ImgRequest) and not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        return {"images": images, "parameters": parameters, "info": json.dumps(generation_info(result, req, timestamp))}

    @router.post("/txt2img", response_model=GenerationResponse)
    def txt2img(req: Txt2ImgRequest) -> dict[str, Any]:
        return run(req, "txt2img")

    @router.post("/img2img", response_model=GenerationResponse)
    def img2img(req: Img2ImgRequest) -> dict[str, Any]:
        return run(req, "img2img")

    @router.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        entry = engine.queue.running_entry
        waiting = len(engine.queue)
        state = ProgressState(job_count=waiting).model_dump()
        if entry is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        job = entry.job
        per_batch = max(1, job.total_steps // max(1, job.batch_total)) if job.total_steps else 0
        state.update(
            job=f"job {job.batch_index + 1}/{job.batch_total}",
            job_no=job.batch_index,
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(entry.joined_at)),
            sampling_step=job.step - job.batch_index * per_batch if per_batch else job.step,
            sampling_steps=per_batch,
            interrupted=job.interrupted,
            skipped=job.skip_requested,
        )
        image = None if skip_current_image else job.preview
        return {
            "progress": job.fraction,
            "eta_relative": job.eta or 0.0,
            "state": state,
            "current_image": encode_png(image) if image is not None else None,
            "textinfo": None,
        }

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
        active = manager.active
        return {
            **settings.options,
            "sd_model_checkpoint": active_title(),
            "sd_checkpoint_hash": active.hash if active else None,
            "CLIP_stop_at_last_layers": settings.options.get("CLIP_stop_at_last_layers", 1),
            "samples_save": engine.settings.save_outputs,
            "samples_format": "png",
            "outdir_samples": "",
            "outdir_txt2img_samples": str(engine.outputs_dir / "txt2img-images"),
            "outdir_img2img_samples": str(engine.outputs_dir / "img2img-images"),
            "live_previews_enable": engine.settings.preview_every > 0,
            "show_progress_every_n_steps": engine.settings.preview_every,
            "sd_checkpoint_cache": manager.ram_cache_size or 0,
            "sd_vae": engine.settings.sd_vae or "Automatic",
            "enable_pnginfo": True,
            "return_grid": False,
        }

    @router.post("/options")
    def set_options(options: dict[str, Any]) -> None:
        """``sd_model_checkpoint`` switches the model (after the running job); other keys are kept and echoed."""
        check_options(options, settings.options)  # all of it, before anything is applied
        wanted = options.get("sd_model_checkpoint")
        if wanted is not None:
            if not isinstance(wanted, str) or not wanted.strip():
                raise EaselError("sd_model_checkpoint must be a checkpoint title, file name or stem")
            engine.switch_checkpoint(wanted)
        if "sd_vae" in options:
            vae = options["sd_vae"]
            if vae is not None and not isinstance(vae, str):
                raise EaselError("sd_vae must be a VAE file name, or Automatic")
            engine.settings.sd_vae = None if vae in (None, "", "Automatic", "None") else vae
        if "samples_save" in options:
            engine.settings.save_outputs = bool(options["samples_save"])
        if "show_progress_every_n_steps" in options:
            every = options["show_progress_every_n_steps"]
            if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                raise EaselError("show_progress_every_n_steps must be a whole number >= 0")
            engine.settings.preview_every = every
        if "CLIP_stop_at_last_layers" in options:
            clip = options["CLIP_stop_at_last_layers"]
            if isinstance(clip, bool) or not isinstance(clip, int) or not 1 <= clip <= 12:
                raise EaselError("CLIP_stop_at_last_layers must be a whole number from 1 to 12")
        settings.options.update({k: v for k, v in options.items() if k != "sd_model_checkpoint"})

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return settings.cmd_flags

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
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

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        manager.refresh()

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        return [
            {"name": schedule_name(n), "label": n, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for n in SCHEDULE_TYPES
        ]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in UPSCALERS]

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        return []

    @router.get("/sd-vae", response_model=list[VaeItem])
    def sd_vae() -> list[dict[str, str]]:
        folder = settings.models_dir / "VAE"
        files = _files(folder, VAE_SUFFIXES)
        return [{"model_name": p.relative_to(folder).as_posix(), "filename": str(p)} for p in files]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        return None

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[dict[str, Any]]:
        folder = settings.models_dir / "Lora"
        files = _files(folder, LORA_SUFFIXES)
        return [{"name": p.stem, "alias": p.stem, "path": str(p), "metadata": {}} for p in files]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        return None

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> dict[str, Any]:
        loaded: dict[str, dict[str, Any]] = {}
        skipped: dict[str, dict[str, Any]] = {}
        for path in _files(settings.embeddings_dir, EMBEDDING_SUFFIXES):
            base = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
            try:
                shape = _embedding_shape(path)
            except Exception:  # a damaged file is listed as skipped, never an error
                shape = None
            (loaded if shape else skipped)[path.stem] = {**base, **(shape or {"shape": None, "vectors": None})}
        return {"loaded": loaded, "skipped": skipped}

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        return None

    @router.get("/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return []

    @router.get("/face-restorers")
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/realesrgan-models")
    def realesrgan_models() -> list[dict[str, Any]]:
        return []

    @router.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, Any]]:
        """The styles file's styles; a broken file is a 422 that says what is wrong with it (it is never rewritten)."""
        return [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in engine.styles.styles()
        ]

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return []

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        total = _total_ram()
        free = available_ram_bytes()
        cuda: dict[str, Any] = {"error": "no CUDA device in use"}
        if manager.device.type == "cuda":
            import torch

            free_gpu, total_gpu = torch.cuda.mem_get_info(manager.device)
            stats = torch.cuda.memory_stats(manager.device)
            cuda = {
                "system": {"free": free_gpu, "used": total_gpu - free_gpu, "total": total_gpu},
                "active": {
                    "current": stats.get("active_bytes.all.current", 0),
                    "peak": stats.get("active_bytes.all.peak", 0),
                },
                "allocated": {
                    "current": stats.get("allocated_bytes.all.current", 0),
                    "peak": stats.get("allocated_bytes.all.peak", 0),
                },
                "reserved": {
                    "current": stats.get("reserved_bytes.all.current", 0),
                    "peak": stats.get("reserved_bytes.all.peak", 0),
                },
                "inactive": {
                    "current": stats.get("inactive_split_bytes.all.current", 0),
                    "peak": stats.get("inactive_split_bytes.all.peak", 0),
                },
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
        return {"ram": {"free": free, "used": max(0, total - free), "total": total}, "cuda": cuda}

    @router.post("/png-info", response_model=PngInfoResponse)
    def png_info(req: PngInfoRequest) -> dict[str, Any]:
        if not (req.image or "").strip():
            return {"info": "", "items": {}, "parameters": {}}
        image = _decode(req.image or "", "image", settings.max_upload_pixels)
        text = read_image_parameters(image) or ""
        items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, str | int | float)}
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(req: ExtrasSingleImageRequest) -> dict[str, Any]:
        if not (req.image or "").strip():
            raise EaselError("image: no image given")
        check_extras_request([("image", req.image or "")], req, settings.max_upload_pixels)
        image = _decode(req.image or "", "image", settings.max_upload_pixels)
        return {"html_info": "", "image": encode_png(upscale(image, req))}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(req: ExtrasBatchImagesRequest) -> dict[str, Any]:
        """Sizes checked from the headers first; then each image decoded, upscaled and encoded before the next."""
        named = [(f"imageList[{i}]", f.data) for i, f in enumerate(req.imageList or [])]
        check_extras_request(named, req, settings.max_upload_pixels)
        results = [encode_png(upscale(_decode(data, what, settings.max_upload_pixels), req)) for what, data in named]
        return {"html_info": "", "images": results}

    return router


def check_options(options: dict[str, Any], stored: dict[str, Any]) -> None:
    """Refuse POST /options bodies that are unusable (NaN, deep nesting) or would grow the kept options unboundedly."""
    problem = unusable_json(options)
    if problem:
        raise EaselError(problem)
    for key, value in options.items():
        if len(key) > MAX_OPTION_KEY_LENGTH:
            raise EaselError(f"the setting name {key[:40]!r}... is longer than {MAX_OPTION_KEY_LENGTH} characters")
        size = len(json.dumps(value))
        if size > MAX_OPTION_VALUE_BYTES:
            raise RequestTooLargeError(
                f"the value of {key!r} is {size:,} bytes as JSON; at most {MAX_OPTION_VALUE_BYTES // 1024} KiB are kept"
            )
    merged = {**stored, **options}
    merged.pop("sd_model_checkpoint", None)  # switches the model; not kept
    if len(merged) > MAX_OPTION_KEYS:
        raise RequestTooLargeError(f"this would keep {len(merged):,} settings; at most {MAX_OPTION_KEYS:,} are kept")
    total = len(json.dumps(merged))
    if total > MAX_OPTIONS_BYTES:
        raise RequestTooLargeError(
            f"the settings would take {total:,} bytes as JSON; at most {MAX_OPTIONS_BYTES // 1024} KiB are kept"
        )


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return available_ram_bytes()


def public_cmd_flags(args: Any) -> dict[str, Any]:
    """The command line as JSON for /cmd-flags, with passwords and password files left out."""
    secret = {"auth", "auth_file", "credentials", "security"}
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in secret:
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return jsonable_encoder(out)
