"""Before and after the sampler in img2img and inpaint: what the pipeline is fed, and how results go back.

The output of an inpaint always has the original image's size, and outside the blurred mask its pixels are
the original's bit for bit (a pixel-space composite is the last step, whatever the model did).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.masks import (
    blur_mask,
    composite_masked,
    crop_for_only_masked,
    fill_masked_area,
    invert_mask,
    is_empty_mask,
    mask_from_upload,
    paste_back,
)
from pipelines.imaging.resize import resize_image
from pipelines.requests import GenerationRequest

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class InpaintPlan:
    """What the pipeline gets (``image``/``mask`` at generation size) and what ``finish`` needs afterwards."""

    original: Image.Image  # RGB, the user's image at its own size
    image: Image.Image  # RGB at width x height, masked content already filled when asked
    mask: Image.Image  # L 0/255 at width x height: where the sampler may change latents
    blurred: Image.Image  # L at the original's size: the composite's alpha
    box: Box | None  # the "only masked" crop, or None for the whole picture


def prepare_img2img(request: GenerationRequest) -> Image.Image:
    """The init image at the requested size, by the request's A1111 resize mode."""
    assert request.init_image is not None
    return resize_image(request.init_image.convert("RGB"), request.width, request.height, request.resize_mode)


def prepare_inpaint(request: GenerationRequest) -> InpaintPlan:
    """Mask -> (inverted) -> blurred; crop for "only masked"; fill the masked area for "fill"."""
    assert request.init_image is not None and request.mask is not None
    original = request.init_image.convert("RGB")
    mask = mask_from_upload(request.mask, original.size)
    if request.inpainting_mask_invert:
        mask = invert_mask(mask)
    if is_empty_mask(mask):
        raise EaselError("The mask is empty: paint a mask first over the part of the picture you want to change.")
    blurred = blur_mask(mask, request.mask_blur)
    reach = _binary(blurred)  # everything the composite can take from the generated image
    source = fill_masked_area(original, reach) if request.inpainting_fill == 0 else original
    if request.inpaint_full_res:
        image, crop_mask, box = crop_for_only_masked(
            source, reach, request.inpaint_full_res_padding, request.width, request.height
        )
        return InpaintPlan(original, image.convert("RGB"), _binary(crop_mask), blurred, box)
    image = resize_image(source, request.width, request.height, 0)
    gen_mask = reach.resize((request.width, request.height), Image.Resampling.NEAREST)
    return InpaintPlan(original, image.convert("RGB"), _binary(gen_mask), blurred, None)


def finish_inpaint(plan: InpaintPlan, generated: Image.Image) -> Image.Image:
    """Put a generated picture back over the original with the blurred mask as alpha."""
    if plan.box is not None:
        return paste_back(plan.original, generated, plan.box, plan.blurred)
    if generated.size != plan.original.size:
        generated = generated.resize(plan.original.size, Image.Resampling.LANCZOS)
    return composite_masked(plan.original, generated, plan.blurred)


def _binary(mask: Image.Image) -> Image.Image:
    """Any value above 0 counts as masked."""
    return Image.fromarray(np.where(np.asarray(mask.convert("L")) > 0, 255, 0).astype(np.uint8), "L")
