"""One ControlNet unit as sd-webui-controlnet's API and UI send it, checked into a typed ``Unit``.

Field names, defaults and enum spellings are that extension's (``enabled``, ``module``, ``model``, ``weight``,
``image`` or legacy ``input_image``, ``mask``, ``resize_mode``, ``processor_res``, ``threshold_a/b``,
``guidance_start/end`` or legacy ``guidance``, ``pixel_perfect``, ``control_mode``, ``hr_option``, ``low_vram`` /
``lowvram``). Two of its behaviours are refused on purpose: an ``image`` string is only ever base64 (never a path
on the server), and ``ipadapter_input`` (a pickle there) is never read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.masks import is_empty_mask, mask_from_upload
from pipelines.imaging.uploads import load_user_image

from . import preprocessors

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"inner fit (scale to fit)": 1, "outer fit (shrink to fit)": 2, "envelope (outer fit)": 2}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
MAX_PIXELS = 4096 * 4096
MAX_UNITS = 8
KNOWN = {
    "enabled",
    "module",
    "model",
    "weight",
    "image",
    "input_image",
    "mask",
    "mask_image",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "guidance",
    "pixel_perfect",
    "control_mode",
    "hr_option",
    "low_vram",
    "lowvram",
    "save_detected_map",
    "ipadapter_input",
    "is_ui",
    "input_mode",
    "batch_images",
    "output_dir",
    "loopback",
    "use_preview_as_input",
    "generated_image",
    "union_control_type",
    "inpaint_crop_input_image",
    "effective_region_mask",
    "animatediff_batch",
    "batch_modifiers",
    "batch_image_dir",
    "batch_input_gallery",
    "batch_mask_dir",
    "batch_mask_gallery",
    "pulid_mode",
}


@dataclass(frozen=True)
class Unit:
    index: int
    module: str
    model: str
    weight: float
    image: Image.Image | None  # None: the tab's input image (img2img/inpaint)
    resize_mode: int  # index in RESIZE_MODES
    processor_res: int
    threshold_a: float
    threshold_b: float
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: int  # index in CONTROL_MODES
    hr_option: int  # index in HR_OPTIONS
    union_control_type: str = "Unknown"  # ControlNet-Union models only (adapters.py): Unknown = by preprocessor
    mask: Image.Image | None = None  # "L", 255 = the area to change (inpaint hints); None: the tab's mask, if any

    def describe(self, model_label: str) -> str:
        """sd-webui-controlnet's infotext value of the unit (``ControlNet 0: "Module: canny, ..."``)."""
        parts = {
            "Module": self.module,
            "Model": model_label,
            "Weight": f"{self.weight:g}",
            "Resize Mode": RESIZE_MODES[self.resize_mode],
            "Processor Res": str(self.processor_res),
            "Threshold A": f"{self.threshold_a:g}",
            "Threshold B": f"{self.threshold_b:g}",
            "Guidance Start": f"{self.guidance_start:g}",
            "Guidance End": f"{self.guidance_end:g}",
            "Pixel Perfect": str(self.pixel_perfect),
            "Control Mode": CONTROL_MODES[self.control_mode],
            "Hr Option": HR_OPTIONS[self.hr_option],
        }
        return ", ".join(f"{k}: {v}" for k, v in parts.items())


def _number(unit: Mapping[str, Any], key: str, default: float, where: str, low: float, high: float) -> float:
    value = unit.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EaselError(f"{where}.{key} must be a number (got {value!r})")
    try:
        number = float(value)
    except ValueError:
        raise EaselError(f"{where}.{key} must be a number (got {value!r})") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise EaselError(f"{where}.{key} must be between {low:g} and {high:g} (got {value!r})")
    return number


def _choice(value: Any, names: tuple[str, ...], aliases: Mapping[str, int], key: str, where: str) -> int:
    if isinstance(value, bool):
        raise EaselError(f"{where}.{key} must be one of {', '.join(names)} (got {value!r})")
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) < len(names):
            return int(text)
        for i, name in enumerate(names):
            if text.lower() == name.lower():
                return i
        if text.lower() in aliases:
            return aliases[text.lower()]
    raise EaselError(f"{where}.{key} must be one of {', '.join(names)} (got {value!r})")


def _bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise EaselError(f"{where}.{key} must be true or false (got {value!r})")


def load_image(value: Any, where: str) -> Image.Image | None:
    """A unit's image: base64 text (never a server path), a PIL image, an array, or ``{"image": ..., "mask": ...}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping):  # sd-webui-controlnet's {"image": b64, "mask": b64} and Gradio's editor value
        inner = value.get("image", value.get("background", value.get("composite")))
        return load_image(inner, where)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise EaselError(f"{where}: an image array must be uint8 [H, W] or [H, W, C]")
        value = Image.fromarray(value)
    return _decode(value, where, "images").convert("RGB")


def _decode(value: Any, where: str, what: str) -> Image.Image:
    """A picture from base64 text (never a server path: ``allow_paths`` stays off) or an image; clear errors."""
    if not isinstance(value, str | bytes | Image.Image):
        raise EaselError(f"{where}: expected a base64 image (got {type(value).__name__})")
    try:
        return load_user_image(value, MAX_PIXELS)
    except EaselError as exc:
        if isinstance(value, str) and _looks_like_path(value):
            raise EaselError(
                f"{where}: not base64 image data; {what} are accepted only as base64, never as a path on the server"
            ) from None
        raise EaselError(f"{where}: {exc}") from None


def _looks_like_path(text: str) -> bool:
    text = text.strip()
    named = text.startswith(("/", "./", "../", "~", "file:")) or text[1:3] in (":/", ":\\")
    return len(text) < 4096 and (named or "." in text[-6:])  # base64 never holds a "."


def parse_unit(value: Any, index: int) -> Unit | None:
    """The checked unit, or None when it is disabled or empty; EaselError naming the field otherwise."""
    where = f"ControlNet unit {index}"
    if value is None or (isinstance(value, Mapping) and not value):
        return None
    if not isinstance(value, Mapping):
        raise EaselError(f"{where} must be an object of sd-webui-controlnet unit fields")
    unknown = sorted(str(k) for k in value if k not in KNOWN)
    if unknown:
        raise EaselError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if value.get("ipadapter_input") not in (None, "", []):
        raise EaselError(
            f"{where}: ipadapter_input is refused (it is a pickle, and Easel never unpickles data from a request)"
        )
    if not _bool(value.get("enabled", True), "enabled", where):
        return None
    model = str(value.get("model") or "None").strip()
    module = str(value.get("module") or "none").strip()
    if model.lower() == "none" and not preprocessors.find(module).model_free:
        return None  # as sd-webui-controlnet: a unit without a model does nothing (unless its module needs none)
    pre = preprocessors.find(module)
    image_value = value.get("image", value.get("input_image"))
    end_default = value.get("guidance", 1.0)
    start = _number(value, "guidance_start", 0.0, where, 0.0, 1.0)
    end = _number({"guidance_end": value.get("guidance_end", end_default)}, "guidance_end", 1.0, where, 0.0, 1.0)
    return Unit(
        index=index,
        module=pre.name,
        model=model,
        weight=_number(value, "weight", 1.0, where, 0.0, 2.0),
        image=load_image(image_value, f"{where}.image"),
        resize_mode=_choice(value.get("resize_mode", 1), RESIZE_MODES, RESIZE_ALIASES, "resize_mode", where),
        processor_res=int(_number(value, "processor_res", -1, where, -1, 2048)),
        threshold_a=_number(value, "threshold_a", -1, where, -1e6, 1e6),
        threshold_b=_number(value, "threshold_b", -1, where, -1e6, 1e6),
        guidance_start=start,
        guidance_end=end,
        pixel_perfect=_bool(value.get("pixel_perfect", False), "pixel_perfect", where),
        control_mode=_choice(value.get("control_mode", 0), CONTROL_MODES, {}, "control_mode", where),
        hr_option=_choice(value.get("hr_option", 0), HR_OPTIONS, {}, "hr_option", where),
        union_control_type=str(value.get("union_control_type") or "Unknown").strip(),
        mask=load_mask(value, where),
    )


def load_mask(unit: Mapping[str, Any], where: str) -> Image.Image | None:
    """The unit's mask: ``mask_image`` (or legacy ``mask``), else the ``mask`` of an ``{"image", "mask"}`` image.

    Base64 like the image (never a path); white (or opaque, on a transparent sheet) is the area to change. An
    all-black mask is no mask.
    """
    image_value = unit.get("image", unit.get("input_image"))
    value = unit.get("mask_image", unit.get("mask"))
    if value in (None, "") and isinstance(image_value, Mapping):
        value = image_value.get("mask")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping) or (isinstance(value, np.ndarray) and value.dtype != np.uint8):
        raise EaselError(f"{where}.mask: expected a base64 image")
    if isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    mask = mask_from_upload(_decode(value, f"{where}.mask", "masks"))
    return None if is_empty_mask(mask) else mask


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: int) -> int:
    """sd-webui-controlnet's "pixel perfect": the processor resolution that lands on the target size exactly."""
    k_h, k_w = height / image.height, width / image.width
    k = min(k_h, k_w) if resize_mode == 2 else max(k_h, k_w)
    return int(round(k * min(image.width, image.height)))


def fit(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """``image`` at ``width`` x ``height`` by the resize mode: stretched, cropped to cover, or padded to fit."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    if resize_mode == 0:
        return image.resize((width, height), Image.BICUBIC)
    scale = (max if resize_mode == 1 else min)(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.BICUBIC)
    if resize_mode == 1:
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))  # black: "no control" in the margins
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas
