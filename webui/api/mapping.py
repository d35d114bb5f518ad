"""A1111 payloads -> engine calls, and engine results -> A1111 replies: no generation logic, only names and shapes.

``to_generation_request`` builds a ``GenerationRequest`` (which validates ranges itself); ``generation_info``
is A1111's ``info`` object; ``upscale_spec`` is the extras payload as the engine's ``UpscaleSpec``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from typing import Any

from PIL import Image, PngImagePlugin

from pipelines.errors import EaselError
from pipelines.fields import FIELDS
from pipelines.generate import VERSION
from pipelines.imaging.upscale import UpscaleSpec
from pipelines.metadata.infotext_request import request_from_infotext, resolve_checkpoint
from pipelines.requests import GenerationRequest, GenerationResult
from webui.api.checks import MAX_REQUEST_PIXELS, check_pixel_budget, decode_image
from webui.api.models import ExtrasBase, GenerationFields, Img2ImgRequest
from webui.api.scripts import alwayson_values

# GenerationRequest field -> the A1111 payload field that sets it
_PAYLOAD_NAMES = {f.name: f.api for f in FIELDS if f.api}


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Raw base64 of a PNG (no data: prefix), carrying the infotext as A1111's API images do."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def value_or(value: Any, default: Any) -> Any:
    """A1111 clients send null for "the default": ``default`` when ``value`` is None."""
    return default if value is None else value


def checkpoint_title(info: Any, short_hash: str | None) -> str:
    """A1111's checkpoint title: ``name [hash]``, or the name alone while the hash is not known."""
    return f"{info.name} [{short_hash}]" if short_hash else info.name


OVERRIDE_FIELDS = {
    "randn_source": "rng_source",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
    "s_churn": "s_churn",
    "s_tmin": "s_tmin",
    "s_tmax": "s_tmax",
    "s_noise": "s_noise",
}
"""``override_settings`` keys -> GenerationRequest fields (the payload's own ``eta``, ``s_churn``... come first)."""


def _clip_skip(overrides: dict[str, Any], defaults: dict[str, Any]) -> int:
    clip_skip = overrides.get("CLIP_stop_at_last_layers", defaults.get("CLIP_stop_at_last_layers", 1))
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int | float):
        raise EaselError("CLIP_stop_at_last_layers must be a number")
    if not math.isfinite(clip_skip) or clip_skip != int(clip_skip):  # int(inf) raised OverflowError: a 500
        raise EaselError(f"CLIP_stop_at_last_layers must be a whole number from 1 to 12 (got {clip_skip})")
    return int(clip_skip)


def _common_kwargs(req: GenerationFields, mode: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The fields every mode has, with A1111's defaults for nulls."""
    overrides = req.override_settings or {}
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise EaselError("override_settings.sd_model_checkpoint must be a checkpoint name")
    endpoint = "txt2img" if mode == "txt2img" else "img2img"
    kwargs: dict[str, Any] = {
        **FIELDS.from_payload(endpoint, req, [mode]),
        "mode": mode,
        "checkpoint": checkpoint or None,
        "restore_checkpoint": bool(checkpoint) and req.override_settings_restore_afterwards is not False,
        "clip_skip": _clip_skip(overrides, defaults),
        "save": bool(req.save_images) and not req.do_not_save_samples,
        "script": req.script_name or None,  # the engine finds it (case-insensitively) or says which exist
        "script_args": tuple(req.script_args or ()),
        "extensions": alwayson_values(req.alwayson_scripts, mode),
    }
    kwargs.setdefault("sampler", req.sampler_index or "Euler")  # A1111's deprecated name, then its default
    for key, name in OVERRIDE_FIELDS.items():  # A1111's per-request settings that are request fields here
        if overrides.get(key) is not None:
            kwargs.setdefault(name, overrides[key])
    vae = overrides.get("sd_vae")
    if isinstance(vae, str) and vae:
        kwargs["vae"] = vae  # "Automatic" and "None" too: the checkpoint's own VAE, whatever the global choice
    return kwargs


def _img2img_kwargs(req: Img2ImgRequest, max_pixels: int) -> dict[str, Any]:
    """The init image (and mask: then it is inpainting), decoded after both sizes were checked from the headers."""
    if not req.init_images:
        raise EaselError("init_images: give at least one image (base64 PNG, JPEG or WebP)")
    sent = [("init_images[0]", req.init_images[0])] + ([("mask", req.mask)] if req.mask else [])
    check_pixel_budget(sent, MAX_REQUEST_PIXELS, max_pixels)
    kwargs: dict[str, Any] = {"init_image": decode_image(req.init_images[0], "init_images[0]", max_pixels)}
    if req.mask:
        kwargs.update(FIELDS.from_payload("img2img", req, ["inpaint"]))
        kwargs["mode"] = "inpaint"
        kwargs["extensions"] = alwayson_values(req.alwayson_scripts, "inpaint")
        kwargs["mask"] = decode_image(req.mask, "mask", max_pixels)
        kwargs["mask_blur"] = req.mask_blur if req.mask_blur is not None else value_or(req.mask_blur_x, 4)
    return kwargs


def to_generation_request(
    req: GenerationFields,
    mode: str,
    defaults: dict[str, Any],
    max_pixels: int,
    find_checkpoint: Callable[[str], Any] | None = None,
) -> GenerationRequest:
    """A1111 payload -> GenerationRequest (which validates ranges itself)."""
    kwargs = _common_kwargs(req, mode, defaults)
    if isinstance(req, Img2ImgRequest):
        kwargs.update(_img2img_kwargs(req, max_pixels))
    if req.infotext:
        kwargs = _fill_from_infotext(kwargs, req, req.infotext, find_checkpoint)
    return GenerationRequest(**kwargs)


def _fill_from_infotext(
    kwargs: dict[str, Any], req: GenerationFields, infotext: str, find_checkpoint: Callable[[str], Any] | None
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
    extensions = dict(merged.get("extensions", {}))
    for owner, values in parsed.extensions.items():  # extension fields the payload's alwayson_scripts left unset
        extensions[owner] = {**values, **extensions.get(owner, {})}
    merged["extensions"] = extensions
    if merged.get("checkpoint") is None and find_checkpoint is not None:
        merged["checkpoint"] = resolve_checkpoint(find_checkpoint, parsed.model_name, parsed.model_hash)
    return merged


def _denoising_strength(request: GenerationRequest) -> float | None:
    """A1111 reports the strength of the pass that used one: img2img/inpaint, or txt2img's hires pass."""
    return request.denoising_strength if request.mode != "txt2img" or request.enable_hr else None


def generation_info(result: GenerationResult, timestamp: str) -> dict[str, Any]:
    """A1111's ``info`` object (returned as a JSON string), from what the engine says it did."""
    request = result.request
    first_seed = result.seeds[0] if result.seeds else request.seed
    return {
        "warnings": result.warnings,  # Easel's addition: missing LoRAs/embeddings, settings the mode ignores
        "prompt": request.prompt,
        "all_prompts": result.prompts,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": result.negative_prompts,
        "seed": first_seed,
        "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else request.subseed,
        "all_subseeds": result.subseeds,
        "subseed_strength": request.subseed_strength,
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
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w if request.seed_resize_from_w > 0 else -1,
        "seed_resize_from_h": request.seed_resize_from_h if request.seed_resize_from_h > 0 else -1,
        "denoising_strength": _denoising_strength(request),
        "extra_generation_params": dict(request.extra_params),
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "styles": list(result.styles),
        "job_timestamp": timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": request.mode == "inpaint",
        "version": VERSION,
        "interrupted": result.interrupted,
    }


def upscale_spec(req: ExtrasBase) -> UpscaleSpec:
    """An extras payload as the engine's upscale parameters, A1111's defaults for nulls."""
    return UpscaleSpec(
        resize_mode=value_or(req.resize_mode, 0),
        upscaling_resize=value_or(req.upscaling_resize, 2),
        upscaling_resize_w=value_or(req.upscaling_resize_w, 512),
        upscaling_resize_h=value_or(req.upscaling_resize_h, 512),
        upscaling_crop=bool(value_or(req.upscaling_crop, True)),
        upscaler_1=req.upscaler_1 or "None",
        upscaler_2=req.upscaler_2 or "None",
        extras_upscaler_2_visibility=value_or(req.extras_upscaler_2_visibility, 0),
    )
