"""Initial noise with A1111's variation seed and "resize seed from", drawn on the CPU so any device agrees.

A variation blends the seed's noise with the variation seed's noise by spherical interpolation at the variation
strength (0: the seed alone, 1: the variation seed alone). "Resize seed from W x H" draws the seed's noise at that
older size and pastes it centred into noise of the new size, so a picture keeps its composition when resized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def image_subseeds(seed: int, subseed: int, seeds: Sequence[int]) -> list[int]:
    """Each image's variation seed: it advances with the image's seed, as A1111's ``subseed + i`` does."""
    return [subseed + (image_seed - seed) for image_seed in seeds]


def seed_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)))


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), vector by vector along dim 1 as A1111 does."""
    a_unit = a / torch.linalg.vector_norm(a, dim=1, keepdim=True)
    b_unit = b / torch.linalg.vector_norm(b, dim=1, keepdim=True)
    cos = (a_unit * b_unit).sum(1).clamp(-1.0, 1.0)
    if float(cos.mean()) > 0.9995:  # nearly parallel: the linear blend is exact enough and stable
        return a * (1 - t) + b * t
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin).unsqueeze(1) * a + (torch.sin(t * omega) / sin).unsqueeze(1) * b


def paste_centred(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` with ``source`` ([C, h, w]) centred in it, cropped where it is larger."""
    out = target.clone()
    _, th, tw = target.shape
    _, sh, sw = source.shape
    dy, dx = (th - sh) // 2, (tw - sw) // 2
    h, w = min(sh, th), min(sw, tw)
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    out[:, ty : ty + h, tx : tx + w] = source[:, sy : sy + h, sx : sx + w]
    return out


def variation_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    subseeds: Sequence[int] = (),
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``[batch, C, H, W]`` noise; ``resize_from`` is ``(width, height)`` in pixels, or None."""
    channels, height, width = (int(s) for s in shape)
    noise_shape = (channels, height, width)
    if resize_from is not None and resize_from[0] > 0 and resize_from[1] > 0:
        noise_shape = (channels, resize_from[1] // 8, resize_from[0] // 8)
    images = []
    for index, seed in enumerate(seeds):
        noise = seed_noise(seed, noise_shape)
        if subseed_strength != 0 and index < len(subseeds):
            noise = slerp(subseed_strength, noise, seed_noise(subseeds[index], noise_shape))
        if noise_shape != (channels, height, width):
            noise = paste_centred(noise, seed_noise(seed, (channels, height, width)))
        images.append(noise)
    return torch.stack(images)
