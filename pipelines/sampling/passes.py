"""What one run of the denoising loop starts from, per mode: A1111's txt2img, img2img, inpaint and hires setups.

A ``DenoisePass`` says which sampler walks which schedule over how many steps, and where it starts: from noise
(txt2img), or from encoded latents at a strength (img2img, inpaint, the hires fix's second pass). Inpainting adds
two things, as in A1111: a 9-channel inpainting UNet gets ``[mask, masked-picture latents]`` as extra input
channels, and every checkpoint's prediction is blended with the original latents outside the mask after each
model call (and the final latents once more), so the unmasked part stays the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.imaging.latents import encode_images, encode_pixels, pixels_tensor
from pipelines.imaging.masks import latent_mask_from_pixel_mask
from pipelines.sampling.denoiser import SamplingState
from pipelines.sampling.loop import img2img_start
from pipelines.sampling.strength import effective_strength


def pass_schedule(steps: int, strength: float | None, fix_steps: bool = False) -> tuple[int, int]:
    """``(steps in the schedule, start_at_step)`` of a pass: txt2img when ``strength`` is None, else img2img."""
    if strength is None:
        return steps, 0
    if fix_steps:  # A1111 divides by the strength here: at 0 it would schedule no steps at all
        return img2img_start(steps, effective_strength(steps, strength), True)
    return img2img_start(steps, strength)  # strength 0: t_enc 0, one step, as A1111


@dataclass(frozen=True)
class DenoisePass:
    """One batch's sampling run. ``init_latents`` None: txt2img from noise; else img2img at ``strength``.

    ``fix_steps``: the run takes exactly ``steps`` steps over a stretched schedule (A1111's hires pass);
    otherwise ``steps`` are scheduled and about ``steps * strength`` run. ``keep`` is the latent-space mask of
    what stays the original (1) in an inpaint; ``image_conditioning`` a 9-channel UNet's extra input.
    """

    sampler: str
    schedule: str
    steps: int
    shape: tuple[int, int, int]  # latent channels, height, width
    init_latents: torch.Tensor | None = None
    strength: float = 1.0
    fix_steps: bool = False
    image_conditioning: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    @property
    def img2img(self) -> bool:
        return self.init_latents is not None

    def schedule_steps(self) -> tuple[int, int]:
        """``(steps in the schedule, start_at_step)``."""
        return pass_schedule(self.steps, None if self.init_latents is None else self.strength, self.fix_steps)

    def blend(self, denoised: torch.Tensor, state: SamplingState | None = None) -> torch.Tensor:
        """A1111's inpaint blend: the original latents where ``keep`` is 1, the prediction elsewhere."""
        if self.keep is None or self.init_latents is None:
            return denoised
        keep = self.keep.to(denoised)
        return self.init_latents.to(denoised) * keep + denoised * (1 - keep)


def _inpaint_conditioning(
    vae: Any, pixels: torch.Tensor, paint: torch.Tensor, latent_hw: tuple[int, int]
) -> torch.Tensor:
    """A 9-channel UNet's extra input: the mask (1 = repaint) and the latents of the picture with the mask blanked."""
    masked = pixels * (1 - paint)  # 0 is mid grey in the VAE's [-1, 1]
    latents = encode_pixels(vae, masked)
    mask = torch.nn.functional.interpolate(paint, size=latent_hw)
    return torch.cat([mask.to(latents), latents], dim=1)


def _all_masked(vae: Any, h: int, w: int, batch: int) -> torch.Tensor:
    """An inpainting UNet's input for a picture it may repaint entirely: all masked, nothing of it given (A1111)."""
    blank = torch.zeros(1, 3, h * 8, w * 8)
    return _inpaint_conditioning(vae, blank, torch.ones(1, 1, h * 8, w * 8), (h, w)).repeat(batch, 1, 1, 1)


def txt2img_pass(request: Any, vae: Any, inpaint_model: bool, batch: int) -> DenoisePass:
    """From noise at the request's size; an inpainting UNet sees a blank picture, all of it masked (as A1111)."""
    h, w = request.height // 8, request.width // 8
    shape = (int(vae.config.latent_channels), h, w)
    image_conditioning = _all_masked(vae, h, w, batch) if inpaint_model else None
    return DenoisePass(
        request.sampler, request.schedule_type, request.steps, shape, image_conditioning=image_conditioning
    )


def img2img_pass(
    request: Any,
    vae: Any,
    inpaint_model: bool,
    images: Sequence[Image.Image],
    strength: float,
    *,
    steps: int | None = None,
    fix_steps: bool = False,
    sampler: str | None = None,
    schedule: str | None = None,
    init_latents: torch.Tensor | None = None,
) -> DenoisePass:
    """From pictures (or latents already encoded, the latent hires fix) at ``strength``; no mask."""
    if init_latents is None:
        init_latents = encode_images(vae, images)
    n, channels, h, w = init_latents.shape
    image_conditioning = _all_masked(vae, h, w, n) if inpaint_model else None  # an inpainting UNet needs a mask
    return DenoisePass(
        sampler or request.sampler,
        schedule or request.schedule_type,
        steps or request.steps,
        (channels, h, w),
        init_latents=init_latents,
        strength=strength,
        fix_steps=fix_steps,
        image_conditioning=image_conditioning,
    )


def inpaint_pass(
    request: Any,
    vae: Any,
    inpaint_model: bool,
    image: Image.Image,
    mask: Image.Image,
    batch: int,
    fill_noise: torch.Tensor | None = None,
) -> DenoisePass:
    """Inpaint ``mask`` (L, 255 = repaint) of ``image``, both at the generation size.

    ``fill_noise`` (``[batch, C, h, w]``): A1111's "latent noise" fill; "latent nothing" (fill 3) zeroes the masked
    latents. Both replace the masked part of the init latents before noise is added, as A1111 does.
    """
    pixels = pixels_tensor([image])
    latents = encode_pixels(vae, pixels)
    _, channels, h, w = latents.shape
    paint = latent_mask_from_pixel_mask(mask, h, w).to(latents)
    init = latents.repeat(batch, 1, 1, 1)
    if request.inpainting_fill == 2 and fill_noise is not None:
        init = init * (1 - paint) + fill_noise.to(init) * paint
    elif request.inpainting_fill == 3:
        init = init * (1 - paint)
    image_conditioning = None
    if inpaint_model:
        pixel_paint = torch.from_numpy((np.asarray(mask.convert("L")) > 127).astype(np.float32))[None, None]
        image_conditioning = _inpaint_conditioning(vae, pixels, pixel_paint, (h, w)).repeat(batch, 1, 1, 1)
    return DenoisePass(
        request.sampler,
        request.schedule_type,
        request.steps,
        (channels, h, w),
        init_latents=init,
        strength=request.denoising_strength,
        image_conditioning=image_conditioning,
        keep=1 - paint,
    )
