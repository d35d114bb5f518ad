"""More control maps that need no weights: content shuffle, standard line art, and the inpaint hint.

Pure numpy/scipy/Pillow functions in the registry's shape (``preprocessors.Preprocessor.run``): an RGB ``uint8``
array at the processor resolution and the two thresholds in, an RGB (or, for the inpaint hint, RGBA) ``uint8`` map
out. What each map is follows sd-webui-controlnet's preprocessors of the same names, so its ControlNets (shuffle,
lineart, inpaint) get the input they were trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

Map = np.ndarray

SHUFFLE_CELL = 256  # pixels per control point of the flow field: large, smooth swirls rather than noise
LINEART_SIGMA = 6.0


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """A smooth random field in [0, 1]: uniform noise on a coarse grid, bicubically enlarged, min-max normalised.

    The grid has a spare cell on each side and the enlargement is cropped back, so the field has no edge effects.
    """
    coarse = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize((width + 2 * cell, height + 2 * cell), Image.BICUBIC)
    field = np.asarray(big, dtype=np.float32)[cell : cell + height, cell : cell + width]
    low, high = float(field.min()), float(field.max())
    return (field - low) / (high - low) if high > low else np.zeros_like(field)


def shuffle(image: Map, _a: float, _b: float, *, seed: int = 0) -> Map:
    """Content shuffle: each output pixel samples the picture at a position given by two smooth random fields.

    The shuffle ControlNet learns the picture's colours and textures without its layout; the fields span the whole
    picture (x in [0, W-1], y in [0, H-1]), so regions are moved and stretched, not just jittered. Seeded (the
    request's seed) so the same request gives the same map.
    """
    height, width = image.shape[:2]
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFF)
    xs = _smooth_field(rng, height, width, SHUFFLE_CELL) * (width - 1)
    ys = _smooth_field(rng, height, width, SHUFFLE_CELL) * (height - 1)
    channels = [
        ndimage.map_coordinates(image[..., c].astype(np.float32), [ys, xs], order=1, mode="nearest")
        for c in range(image.shape[2])
    ]
    return np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)


def lineart_standard(image: Map, _a: float, _b: float) -> Map:
    """Line art without a model: how much darker each pixel is than its Gaussian-blurred surroundings.

    Dark lines on a light ground (and dark edges in a photo) come out white on black, the lineart ControlNets'
    input. The darkest channel's difference is taken, then scaled so the typical line (the median of the
    clearly-visible ones, at least 16 levels) lands near half brightness.
    """
    x = image.astype(np.float32)
    blurred = ndimage.gaussian_filter(x, sigma=(LINEART_SIGMA, LINEART_SIGMA, 0), mode="mirror", truncate=3.0)
    intensity = np.clip((blurred - x).min(axis=2), 0, 255)
    visible = intensity[intensity > 8]
    typical = max(16.0, float(np.median(visible))) if visible.size else 16.0
    lines = np.clip(intensity / typical * 127.0, 0, 255).astype(np.uint8)
    return np.repeat(lines[..., None], 3, axis=2)


def inpaint_hint(image: Map, _a: float, _b: float) -> Map:
    """The inpaint ControlNets' input: the picture with the mask (255 = repaint) in the alpha channel, binarised.

    The hint tensor made from it marks the masked pixels -1 (``masking.hint_array``), as that ControlNet expects.
    """
    if image.shape[2] == 3:
        return np.dstack([image, np.zeros(image.shape[:2], dtype=np.uint8)])
    alpha = np.where(image[..., 3] > 127, 255, 0).astype(np.uint8)
    return np.dstack([image[..., :3], alpha])
