"""Pixels <-> latents through the checkpoint's VAE: the one encode and the one decode every mode uses.

Kept apart from the sampling loop so the memory policy can tile or slice them (and move the VAE) in one place;
the tiling itself is ``pipelines.imaging.tiled_vae`` (exact: tiles share GroupNorm statistics and margins).
Latents here are always in the sampler's space: VAE latents times ``scaling_factor`` (minus ``shift_factor``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.imaging.tiled_vae import decode_maybe_tiled, encode_maybe_tiled

log = logging.getLogger(__name__)


def _claim(vae: Any) -> torch.device:
    """Bring the VAE onto its execution device and return it.

    The memory policy's offload hooks (accelerate's ``_hf_hook`` protocol) fire on ``forward``; ``encode``/``decode``
    are not ``forward``, so the hook is asked directly, as diffusers pipelines do before a VAE call.
    """
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)
    return next(vae.parameters()).device


def _upcast_if_forced(vae: Any) -> None:
    """SDXL's original VAE overflows in fp16 (its config says ``force_upcast``): run it in fp32."""
    if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
        vae.to(torch.float32)


def decode_latents(vae: Any, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode to RGB; fp16 VAEs that overflow (NaN) are upcast to fp32 once and the decode retried."""
    _upcast_if_forced(vae)
    device = _claim(vae)
    scaled = (latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)).to(device)
    with torch.no_grad():
        pixels = decode_maybe_tiled(vae, scaled.to(vae.dtype))
        if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
            log.warning("VAE produced NaNs in %s; upcasting it to fp32", vae.dtype)
            vae.to(torch.float32)
            pixels = decode_maybe_tiled(vae, scaled.to(torch.float32))
    arrays = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).numpy()), "RGB") for a in arrays]


def pixels_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB pictures as one ``[N, 3, H, W]`` float32 batch in [-1, 1], the VAE's input range."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` pixels in [-1, 1] -> sampler-space latents, float32 on the VAE's device.

    The latent distribution's mean, not a sample: the same picture always gives the same latents (A1111 draws a
    sample from the global RNG, which only adds noise ~100x smaller than the first sampling step's).
    """
    _upcast_if_forced(vae)
    device = _claim(vae)
    with torch.no_grad():
        latents = encode_maybe_tiled(vae, pixels.to(device, vae.dtype))
        if not torch.isfinite(latents).all() and vae.dtype != torch.float32:
            log.warning("VAE encode produced NaNs in %s; upcasting it to fp32", vae.dtype)
            vae.to(torch.float32)
            latents = encode_maybe_tiled(vae, pixels.to(device, torch.float32))
    shift = vae.config.get("shift_factor") or 0.0
    return ((latents.float() - shift) * vae.config.scaling_factor).float()


def encode_images(vae: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB pictures -> sampler-space latents ``[N, C, H/8, W/8]``."""
    return encode_pixels(vae, pixels_tensor(images))
