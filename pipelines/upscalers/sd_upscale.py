"""SD upscale (A1111's img2img script), the engine side: upscale, then img2img tile by tile, seams blended.

The picture is upscaled by ``scale`` with a chosen upscaler, cut into overlapping tiles of the generation size
(``tile_width`` x ``tile_height``, A1111's default overlap 64 px), and each tile is repainted by an img2img call
``(tile, seed) -> tile`` that the caller binds (the built-in script binds ``Engine.generate``). The repainted tiles
are cross-faded over their overlaps exactly as model tiles are (``tiles.tiled_call`` at scale 1), so no seam shows.
``img2img`` receives the same ``seed`` for every tile, in row order; the built-in script numbers the tiles' seeds as
A1111 does (``extensions/sd_upscale``). Nothing here knows about the UI, the API or the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines.errors import EaselError
from pipelines.upscalers.tiles import tile_count, tiled_call

TileImg2Img = Callable[[Image.Image, int], Image.Image]
"""``(tile picture, seed) -> repainted tile of the same size``."""
UpscaleTo = Callable[[Image.Image, tuple[int, int]], Image.Image]
"""``(picture, exact size) -> picture at that size`` (the chosen upscaler)."""
DEFAULT_OVERLAP = 64
MAX_SCALE = 8


@dataclass(frozen=True)
class SdUpscalePlan:
    """Sizes of one SD upscale: the upscaled picture, the tiles (multiples of 8, as the VAE needs), their count."""

    size: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    tiles: int


def plan_sd_upscale(
    source: tuple[int, int],
    scale: float,
    tile_width: int,
    tile_height: int,
    overlap: int = DEFAULT_OVERLAP,
    resize: bool = True,
) -> SdUpscalePlan:
    """The sizes for upscaling a ``source``-sized picture; EaselError for a scale or tile size that cannot work.

    As A1111's upscalers, the upscaled size is ``source * scale`` rounded down to a multiple of 8; ``resize`` False
    keeps the picture's own size (A1111's "None" upscaler: the tiles are repainted without an upscale).
    """
    if not 1 <= scale <= MAX_SCALE:
        raise EaselError(f"SD upscale: the scale factor must be between 1 and {MAX_SCALE} (got {scale:g})")
    if tile_width < 64 or tile_height < 64 or tile_width % 8 or tile_height % 8:
        raise EaselError(f"SD upscale: tiles must be multiples of 8, at least 64 (got {tile_width}x{tile_height})")
    if overlap < 0:
        raise EaselError(f"SD upscale: the tile overlap cannot be negative (got {overlap})")
    width, height = (int(source[0] * scale // 8 * 8), int(source[1] * scale // 8 * 8)) if resize else source
    if width < 64 or height < 64:
        raise EaselError(f"SD upscale: the upscaled picture would be {width}x{height}; at least 64x64 is needed")
    tile = (min(tile_width, width // 8 * 8), min(tile_height, height // 8 * 8))
    return SdUpscalePlan((width, height), tile, overlap, tile_count(width, height, tile, overlap))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def sd_upscale(
    image: Image.Image,
    plan: SdUpscalePlan,
    upscale: UpscaleTo,
    img2img: TileImg2Img,
    seed: int,
    after_tile: Callable[[], None] | None = None,
) -> Image.Image:
    """``image`` upscaled to ``plan.size``, every tile repainted by ``img2img``, blended; ``after_tile`` may raise."""
    big = upscale(image.convert("RGB"), plan.size)
    if big.size != plan.size:
        raise EaselError(f"SD upscale: the upscaler returned {big.size}, not {plan.size}")

    def repaint(pixels: torch.Tensor) -> torch.Tensor:
        tile = _to_image(pixels)
        out = img2img(tile, seed)
        if out.size != tile.size:
            raise EaselError(f"SD upscale: a {tile.size} tile came back as {out.size}")
        return _to_tensor(out)

    return _to_image(tiled_call(repaint, _to_tensor(big), 1, plan.tile, plan.overlap, after_tile))
