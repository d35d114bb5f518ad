"""Hires fix for txt2img, as A1111: a first pass at the asked size, an upscale, then an img2img pass at the big size.

Upscalers: the "Latent" family resizes the latents themselves (bilinear, bicubic or nearest, optionally
antialiased); "Lanczos", "Nearest" and "None" decode to pixels, resize there and let the img2img pass encode
again. The target is ``hr_scale`` times the size, or ``hr_resize_x`` x ``hr_resize_y`` (one of them 0: keep the
aspect ratio; both given with another aspect ratio: scale to cover, then crop the centre). The second pass runs
``hr_second_pass_steps`` (0: the first pass's steps) at ``denoising_strength``, optionally with its own sampler
and prompts. Sizes are rounded down to multiples of 8, which the VAE needs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.errors import EaselError
from pipelines.sampling.strength import effective_strength

if TYPE_CHECKING:
    from pipelines.requests import GenerationRequest

# name -> (interpolate mode, antialias) for latent upscalers; None for pixel-space ones (PIL filter).
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
HIRES_UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)


@dataclass(frozen=True)
class HiresSize:
    """``upscale``: what the first pass is resized to; ``target``: the final size after the centre crop."""

    upscale: tuple[int, int]
    target: tuple[int, int]


def _floor8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> HiresSize:
    """A1111's rule for the second pass size, with every side a multiple of 8."""
    if resize_x <= 0 and resize_y <= 0:
        size = (_floor8(width * scale), _floor8(height * scale))
        return HiresSize(size, size)
    if resize_y <= 0:
        size = (_floor8(resize_x), _floor8(resize_x * height / width))
        return HiresSize(size, size)
    if resize_x <= 0:
        size = (_floor8(resize_y * width / height), _floor8(resize_y))
        return HiresSize(size, size)
    target = (_floor8(resize_x), _floor8(resize_y))
    if width / height < resize_x / resize_y:  # wider target: match widths, crop height
        upscale = (target[0], max(target[1], _floor8(resize_x * height / width)))
    else:
        upscale = (max(target[0], _floor8(resize_y * width / height)), target[1])
    return HiresSize(upscale, target)


def request_hires_size(request: GenerationRequest) -> HiresSize:
    return hires_size(request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)


def check_hires(request: GenerationRequest, upscalers: Collection[str] = HIRES_UPSCALERS) -> None:
    """Validation for the hires fields (called by ``GenerationRequest.validated`` when hires fix is on).

    ``upscalers``: the names the engine can use (``UpscalerLibrary.hires_names``: these and the model upscalers).
    """
    if request.hr_upscaler not in upscalers:
        raise EaselError(f"unknown hires upscaler '{request.hr_upscaler}'; use one of {', '.join(upscalers)}")
    if not 1 <= request.hr_scale <= 8:
        raise EaselError(f"Hires upscale must be between 1 and 8 (got {request.hr_scale:g})")
    for name, value in (("Hires resize width", request.hr_resize_x), ("Hires resize height", request.hr_resize_y)):
        if not 0 <= value <= 4096:
            raise EaselError(f"{name} must be between 0 and 4096 (got {value})")
    if not 0 <= request.hr_second_pass_steps <= 150:
        raise EaselError(f"Hires steps must be between 0 and 150 (got {request.hr_second_pass_steps})")
    if not 0 <= request.denoising_strength <= 1:
        raise EaselError(f"Denoising strength must be between 0 and 1 (got {request.denoising_strength:g})")
    size = request_hires_size(request)
    if max(*size.upscale, *size.target) > 4096:
        raise EaselError(f"the hires size {size.upscale[0]}x{size.upscale[1]} is too large (at most 4096)")


def hires_steps(request: GenerationRequest) -> int:
    """The step count the second pass is scheduled with (its sampler runs ``steps * denoising strength``)."""
    return request.hr_second_pass_steps or request.steps


def upscale_latents(latents: torch.Tensor, size: HiresSize, upscaler: str) -> torch.Tensor:
    """Latent-space upscale to ``size.upscale``, then centre crop to ``size.target``."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    width, height = size.upscale
    kwargs: dict[str, Any] = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(latents.float(), size=(height // 8, width // 8), mode=mode, **kwargs).to(latents.dtype)
    return _crop_centre(resized, size.target[1] // 8, size.target[0] // 8)


def _crop_centre(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = (latents.shape[2] - height) // 2
    left = (latents.shape[3] - width) // 2
    return latents[:, :, top : top + height, left : left + width]


def upscale_image(
    image: Image.Image,
    size: HiresSize,
    upscaler: str,
    resize: Callable[[Image.Image, tuple[int, int], str], Image.Image] | None = None,
) -> Image.Image:
    """Pixel-space upscale to ``size.upscale``, then centre crop to ``size.target``.

    PIL does None, Lanczos and Nearest; ``resize(image, size, name)`` any other name (a model upscaler).
    """
    if upscaler in PIXEL_UPSCALERS or resize is None:
        resized = image.resize(size.upscale, PIXEL_UPSCALERS[upscaler])
    else:
        resized = resize(image, size.upscale, upscaler)
    width, height = size.target
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


PixelUpscale = Callable[[Image.Image, HiresSize, str], Image.Image]
"""``(first-pass picture, size, upscaler name) -> picture at size.target``: how a non-latent upscaler resizes."""


def second_pass_inputs(
    request: GenerationRequest,
    active: Any,
    latents: torch.Tensor,
    decode: Callable[[torch.Tensor], list[Image.Image]],
    upscale: PixelUpscale | None = None,
) -> dict[str, Any]:
    """The img2img (or, for an inpainting UNet, inpaint) pipeline arguments of the second pass."""
    size = request_hires_size(request)
    width, height = size.target
    strength = effective_strength(hires_steps(request), request.denoising_strength)
    inpaint_model = active.is_inpaint
    if request.hr_upscaler in LATENT_UPSCALERS and not inpaint_model:
        return {"image": upscale_latents(latents, size, request.hr_upscaler), "strength": strength, "mode": "img2img"}
    if upscale is None:
        upscale = upscale_image
        upscaler = request.hr_upscaler if request.hr_upscaler in PIXEL_UPSCALERS else "Lanczos"
    else:
        upscaler = request.hr_upscaler
    images = [upscale(image, size, upscaler) for image in decode(latents)]
    inputs: dict[str, Any] = {"image": images, "strength": strength, "mode": "img2img"}
    if inpaint_model:  # all of the picture is "masked": the inpainting UNet repaints it at the new size
        mask = Image.new("L", (width, height), 255)
        inputs.update(mask_image=[mask] * len(images), width=width, height=height, mode="inpaint")
    return inputs
