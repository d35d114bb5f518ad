"""A1111's resize modes (just resize, crop and resize, resize and fill) on PIL images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.pixels import check_size

RESIZE_MODES: tuple[str, ...] = ("Just resize", "Crop and resize", "Resize and fill")
"""A1111 ``resize_mode`` 0-2, by index."""


def fit_geometry(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where a src_w x src_h picture lands when scaled to fit inside width x height, centred.

    Returns (fitted_w, fitted_h, left, top). Shared by "Resize and fill" and paste_back so the way
    back is the exact inverse of the way there.
    """
    scale = min(width / src_w, height / src_h)
    fitted_w = min(width, max(1, round(src_w * scale)))
    fitted_h = min(height, max(1, round(src_h * scale)))
    return fitted_w, fitted_h, (width - fitted_w) // 2, (height - fitted_h) // 2


def _cover_box(src_w: int, src_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred part of the source with the target's aspect ratio (what "Crop and resize" keeps)."""
    if src_w * height > width * src_h:  # source is wider than the target
        crop_w = src_h * width / height
        left = (src_w - crop_w) / 2
        return (left, 0.0, left + crop_w, float(src_h))
    crop_h = src_w * height / width
    top = (src_h - crop_h) / 2
    return (0.0, top, float(src_w), top + crop_h)


def resize_image(image: Image.Image, width: int, height: int, mode: int = 0) -> Image.Image:
    """Bring an init image to the generation size the way A1111's resize modes do (Lanczos).

    0 "Just resize": stretch. 1 "Crop and resize": scale to cover, crop the centre.
    2 "Resize and fill": scale to fit, centre, and fill the bars by stretching the edge pixels.
    """
    check_size(width, height)
    width, height = int(width), int(height)
    if isinstance(mode, bool) or mode not in (0, 1, 2):
        names = ", ".join(f"{i} {name!r}" for i, name in enumerate(RESIZE_MODES))
        raise EaselError(f"Unknown resize mode {mode!r}; use one of {names}.")
    lanczos = Image.Resampling.LANCZOS
    if mode == 0:
        return image.resize((width, height), lanczos)
    if mode == 1:
        return image.resize((width, height), lanczos, box=_cover_box(image.width, image.height, width, height))

    fitted_w, fitted_h, left, top = fit_geometry(image.width, image.height, width, height)
    fitted = image.resize((fitted_w, fitted_h), lanczos)
    if (fitted_w, fitted_h) == (width, height):
        return fitted
    arr = np.asarray(fitted)
    pad = ((top, height - fitted_h - top), (left, width - fitted_w - left)) + ((0, 0),) * (arr.ndim - 2)
    return Image.fromarray(np.pad(arr, pad, mode="edge"), mode=fitted.mode)
