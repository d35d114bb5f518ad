"""Small conversions every imaging module shares: arrays <-> images, masks as arrays, alpha and luminance.

Conventions (DESIGN.md section 7): a mask is a PIL "L" image, 0 = keep, 255 = regenerate; boxes are PIL boxes
``(left, top, right, bottom)``; sizes are ``(width, height)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from pipelines.errors import EaselError

ImageLike = Image.Image | np.ndarray | str | os.PathLike
Box = tuple[int, int, int, int]


def array_to_image(array: np.ndarray) -> Image.Image:
    """Numpy -> PIL, accepting what Gradio and callers hand over (uint8, bool, 0..1 floats)."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr, mode="RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"cannot read an image from an array of shape {arr.shape}")


def to_image(value: Any) -> Image.Image:
    """Anything Gradio may put in an image slot -> PIL. Paths here come from the server, not users."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return array_to_image(value)
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, str | os.PathLike):
        with Image.open(value) as im:
            im.load()
            return im.copy()
    raise TypeError(f"not an image: {type(value).__name__}")


def mask_array(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A mask as a 2-D uint8 array (0 keep .. 255 regenerate)."""
    if isinstance(mask, Image.Image):
        if mask.mode != "L":
            mask = mask.convert("L")
        return np.asarray(mask, dtype=np.uint8)
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[:, :, 0] if arr.shape[2] == 1 else np.asarray(array_to_image(arr).convert("L"))
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return arr


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def alpha_of(image: Image.Image) -> np.ndarray:
    """Alpha channel of an image that has one, as uint8."""
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    return np.asarray(image.getchannel("A"), dtype=np.uint8)


def luminance_of(image: Image.Image) -> np.ndarray:
    """Grey level 0..255, treating 16-bit and float images by their own range."""
    if image.mode.startswith("I") or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() if arr.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255:
            arr = arr / 257.0
        return np.clip(arr, 0, 255).round().astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def check_size(width: int, height: int) -> None:
    if int(width) < 1 or int(height) < 1:
        raise EaselError(f"Width and height must be at least 1 pixel (got {width}x{height}).")
