"""Infotext -> ``GenerationRequest`` fields: PNG Info's "Send to", the prompt box's "read parameters" button, and
the API's A1111 ``infotext`` request field all use ``request_from_infotext``.

Only fields the text really carries are returned, so a caller can fill just what its request left unset. Values
that do not parse (another tool's conventions, a hand-edited text) are skipped and listed, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.imaging.masks import MASKED_CONTENT
from pipelines.imaging.resize import RESIZE_MODES
from pipelines.metadata.infotext import parse_infotext

# infotext key -> (request field, converter)
_SIMPLE: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("schedule_type", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Clip skip": ("clip_skip", int),
    "Denoising strength": ("denoising_strength", float),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Hires upscale": ("hr_scale", float),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "VAE": ("vae", str),
    "Mask blur": ("mask_blur", int),
    "Masked area padding": ("inpaint_full_res_padding", int),
}
_HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires resize-1", "Hires steps", "Hires upscaler")


def _number(converter: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if converter is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError(f"{text} is not a whole number")
            return int(value)
        value = converter(text)
        if isinstance(value, float) and not math.isfinite(value):  # float() reads "nan" and "inf"
            raise ValueError(f"{text} is not a finite number")
        return value

    return convert


@dataclass
class InfotextFields:
    """Request keyword arguments read from an infotext, and what could not be read."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # infotext key -> why
    model_name: str | None = None
    model_hash: str | None = None


def request_from_infotext(source: str | Mapping[str, str]) -> InfotextFields:
    """Every ``GenerationRequest`` field an infotext (text, or ``parse_infotext``'s dict) determines."""
    fields = parse_infotext(source) if isinstance(source, str) else dict(source)
    out = InfotextFields()
    kwargs = out.kwargs
    if "Prompt" in fields:
        kwargs["prompt"] = fields["Prompt"]
    if "Negative prompt" in fields:
        kwargs["negative_prompt"] = fields["Negative prompt"]
    for key, (name, converter) in _SIMPLE.items():
        if key not in fields:
            continue
        raw = fields[key].strip()
        try:
            kwargs[name] = _number(converter)(raw) if converter is not str else raw
        except ValueError:
            out.skipped[key] = f"'{raw}' is not a number"
    if any(key in fields for key in _HIRES_KEYS):
        kwargs["enable_hr"] = True
    if "Seed" in out.skipped or "Variation seed" in out.skipped:
        kwargs.pop("subseed_strength", None)
    if "Inpaint area" in fields:
        kwargs["inpaint_full_res"] = fields["Inpaint area"].strip().lower() == "only masked"
    if "Masked content" in fields:
        value = fields["Masked content"].strip().lower()
        if value in MASKED_CONTENT:
            kwargs["inpainting_fill"] = MASKED_CONTENT.index(value)
        else:
            out.skipped["Masked content"] = f"unknown value '{fields['Masked content']}'"
    if "Mask mode" in fields:
        kwargs["inpainting_mask_invert"] = fields["Mask mode"].strip().lower() == "inpaint not masked"
    if "Resize mode" in fields:
        modes = [mode.lower() for mode in RESIZE_MODES]
        value = fields["Resize mode"].strip().lower()
        if value in modes:
            kwargs["resize_mode"] = modes.index(value)
        else:
            out.skipped["Resize mode"] = f"unknown value '{fields['Resize mode']}'"
    out.model_name = fields.get("Model") or None
    out.model_hash = fields.get("Model hash") or None
    return out


def fill_unset(kwargs: Mapping[str, Any], infotext: str, unset: object = None) -> dict[str, Any]:
    """``kwargs`` with every field the infotext determines added where ``kwargs`` holds ``unset`` or nothing.

    What the API's ``infotext`` field does: explicit request values win, the infotext fills the rest. The
    checkpoint is not touched here: resolve ``model_name`` / ``model_hash`` with the manager first.
    """
    parsed = request_from_infotext(infotext)
    merged = dict(kwargs)
    for name, value in parsed.kwargs.items():
        if merged.get(name, unset) is unset:
            merged[name] = value
    return merged


def resolve_checkpoint(find: Callable[[str], Any], model_name: str | None, model_hash: str | None) -> str | None:
    """The checkpoint an infotext names, as A1111 picks it: by hash first, then by name; None if neither is here.

    ``find`` is ``PipelineManager.find`` (raises EaselError when nothing matches); it returns a CheckpointInfo.
    """
    from pipelines.errors import EaselError

    for query in (model_hash, model_name):
        if not query:
            continue
        try:
            return find(query).name
        except EaselError:
            continue
    return None
