"""A cheap live preview: project latents to RGB with a fixed linear map instead of running the VAE decoder."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Least-squares fits of latent channels to RGB, as published for the SD1/2 and SDXL VAEs (A1111 "Approx cheap").
_SD_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
_SDXL_FACTORS = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
]


def latents_to_preview(latents: torch.Tensor, sdxl: bool = False, index: int = 0) -> Image.Image:
    """One latent of a batch as an RGB image at 8x the latent size (nearest), in a few milliseconds."""
    factors = torch.tensor(_SDXL_FACTORS if sdxl else _SD_FACTORS, dtype=torch.float32)
    latent = latents[index, :4].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", latent, factors)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    return image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
