"""Outpainting is an inpaint request on a bigger canvas: grow it, pre-fill the new area, mask it with the seam.

The UI and the API both call ``outpaint_request`` and hand the result to ``Engine.generate`` like any inpaint,
so the pixel-exact composite (everything outside the blurred mask is the original's) holds here too.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from pipelines.errors import EaselError
from pipelines.imaging.outpaint_canvas import OUTPAINT_FILLS, outpaint_canvas
from pipelines.requests import MAX_SEED, GenerationRequest

MIN_SIDE = 64
MAX_SIDE = 2048


def outpaint_generation_size(canvas: tuple[int, int], target_area: int) -> tuple[int, int]:
    """The size to sample a grown canvas at: its aspect ratio, about ``target_area`` pixels, multiples of 8.

    The panel's width x height says how many pixels the user wants the model to work on; an outpainted canvas
    keeps its own shape so nothing is stretched (the result is scaled back to the canvas size afterwards).
    """
    width, height = canvas
    scale = math.sqrt(max(target_area, MIN_SIDE * MIN_SIDE) / (width * height))
    scale = min(scale, MAX_SIDE / width, MAX_SIDE / height)

    def side(value: float) -> int:
        return int(min(MAX_SIDE, max(MIN_SIDE, round(value / 8) * 8)))

    return side(width * scale), side(height * scale)


def outpaint_request(
    request: GenerationRequest,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    fill: str = "edge",
) -> GenerationRequest:
    """``request`` (its init_image is the picture to extend) as an inpaint of the grown canvas.

    The canvas' new area is already filled (edge colours or noise, seeded by the request's seed), so the
    sampler starts from it ("original" masked content). Raises EaselError for no image or no side chosen.
    """
    if request.init_image is None:
        raise EaselError("no image given: upload or paste an image first, then outpaint it")
    if fill not in OUTPAINT_FILLS:
        raise EaselError(f"unknown outpaint fill '{fill}'; use one of {', '.join(OUTPAINT_FILLS)}")
    seed = int(request.seed)
    if seed == -1:
        seed = random.randint(0, MAX_SEED)
    canvas, mask = outpaint_canvas(request.init_image.convert("RGB"), left, right, up, down, fill, seed)
    width, height = request.width, request.height
    if not request.inpaint_full_res:
        width, height = outpaint_generation_size(canvas.size, request.width * request.height)
    sides = ", ".join(
        f"{name} {amount}"
        for name, amount in zip(("left", "right", "up", "down"), (left, right, up, down), strict=True)
        if amount
    )
    return replace(
        request,
        mode="inpaint",
        init_image=canvas,
        mask=mask,
        seed=seed,
        width=width,
        height=height,
        inpainting_mask_invert=False,
        inpainting_fill=1,
        extra_params={**request.extra_params, "Outpaint": f"{sides} px, {fill}"},
    )
