"""The outpaint canvas: the picture on a larger canvas, the new area filled from its edges, and its mask."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.masks import gaussian_blur_float

OUTPAINT_FILLS: tuple[str, ...] = ("edge", "noise")

OUTPAINT_STEP = 8
OUTPAINT_MAX = 512

OUTPAINT_SEAM_BAND = 32
"""Pixels of the original, next to each extended side, that the outpaint mask also covers (ramping
from 255 at the seam to 0 inside) so the model repaints the join instead of leaving a hard edge."""

# Blur levels (sigma, px) for the outpaint edge fill: farther from the picture, blurrier.
_OUTPAINT_BLUR_LEVELS: tuple[float, ...] = (0.0, 4.0, 16.0, 64.0, 256.0)
_OUTPAINT_NOISE_STD = 48.0


# ---------------------------------------------------------------------------------------------
# Outpaint
# ---------------------------------------------------------------------------------------------


def _outpaint_amount(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise EaselError(f"Outpaint {name} must be a whole number of pixels (got {value!r}).")
    amount = int(value)
    if amount != 0 and not (OUTPAINT_STEP <= amount <= OUTPAINT_MAX and amount % OUTPAINT_STEP == 0):
        raise EaselError(
            f"Outpaint {name} must be 0 or a multiple of {OUTPAINT_STEP} from {OUTPAINT_STEP} to "
            f"{OUTPAINT_MAX} pixels (got {amount})."
        )
    return amount


def _edge_extend_fill(padded: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Blend blur levels of an edge-extended canvas: sharp near the picture, soft far from it."""
    levels = [gaussian_blur_float(padded, sigma) for sigma in _OUTPAINT_BLUR_LEVELS]
    sigmas = np.asarray(_OUTPAINT_BLUR_LEVELS, dtype=np.float32)
    wanted = np.clip(distance * 0.5, 0.0, sigmas[-1])  # blur grows with distance from the seam
    upper = np.clip(np.searchsorted(sigmas, wanted, side="left"), 1, len(sigmas) - 1)
    lower = upper - 1
    t = (wanted - sigmas[lower]) / (sigmas[upper] - sigmas[lower])
    out = np.zeros_like(padded)
    for index, level in enumerate(levels):
        weight = np.where(lower == index, 1.0 - t, 0.0) + np.where(upper == index, t, 0.0)
        out += level * weight[:, :, None].astype(np.float32)
    return out


def outpaint_canvas(
    image: Image.Image,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    fill: str = "edge",
    seed: int = 0,
    seam_band: int = OUTPAINT_SEAM_BAND,
) -> tuple[Image.Image, Image.Image]:
    """Grow the canvas for outpainting; returns (canvas RGB, mask L).

    The original sits at (left, up) unchanged. The new area is pre-filled so the model has colours
    to continue: "edge" extends the border pixels outwards and blurs them more the farther they go;
    "noise" adds seeded Gaussian noise on top of that (more freedom, same palette). The mask is 255
    on the new area plus a band of ``seam_band`` px into the original along each extended side,
    ramping down to 0, so the join itself is repainted.
    """
    left, right = _outpaint_amount("left", left), _outpaint_amount("right", right)
    up, down = _outpaint_amount("up", up), _outpaint_amount("down", down)
    if left == right == up == down == 0:
        raise EaselError("Choose at least one side to extend for outpainting.")
    if fill not in OUTPAINT_FILLS:
        raise EaselError(f"Unknown outpaint fill {fill!r}; use one of {', '.join(OUTPAINT_FILLS)}.")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    canvas_h, canvas_w = height + up + down, width + left + right

    ys = np.arange(canvas_h, dtype=np.float32)[:, None]
    xs = np.arange(canvas_w, dtype=np.float32)[None, :]
    dx = np.maximum(np.maximum(left - xs, xs - (left + width - 1)), 0.0)
    dy = np.maximum(np.maximum(up - ys, ys - (up + height - 1)), 0.0)
    distance = np.sqrt(dx**2 + dy**2)
    outside = distance > 0

    padded = np.pad(rgb, ((up, down), (left, right), (0, 0)), mode="edge").astype(np.float32)
    filled = _edge_extend_fill(padded, distance)
    if fill == "noise":
        rng = np.random.default_rng(int(seed))
        filled = filled + rng.normal(0.0, _OUTPAINT_NOISE_STD, size=filled.shape).astype(np.float32)
    canvas = np.clip(filled, 0, 255).round().astype(np.uint8)
    canvas[up : up + height, left : left + width] = rgb

    band = max(0, int(seam_band))
    ramp = np.zeros((canvas_h, canvas_w), dtype=np.float32)
    if band:
        inside_x = xs - left  # 0 on the first original column
        inside_y = ys - up
        sides = []
        if left:
            sides.append(np.broadcast_to(inside_x, ramp.shape))
        if right:
            sides.append(np.broadcast_to(left + width - 1 - xs, ramp.shape))
        if up:
            sides.append(np.broadcast_to(inside_y, ramp.shape))
        if down:
            sides.append(np.broadcast_to(up + height - 1 - ys, ramp.shape))
        for depth in sides:
            ramp = np.maximum(ramp, np.clip((band - depth) / band, 0.0, 1.0))
    mask = np.where(outside, 255, np.round(ramp * 255)).astype(np.uint8)
    return Image.fromarray(canvas, mode="RGB"), Image.fromarray(mask, mode="L")
