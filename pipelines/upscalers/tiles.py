"""Tiled inference for image-to-image models: overlapping tiles, blended so no seam shows.

A 4x upscale of a 2048 px picture in one call would need tens of gigabytes of activations; tiles of ``tile`` pixels
(A1111's ``ESRGAN_tile``, default 192) bound that, whatever the picture's size. Neighbouring tiles overlap by
``overlap`` pixels (``ESRGAN_tile_overlap``); in the output each tile's weight rises linearly from the edge it shares
with a neighbour across the overlap, and the weighted sum is normalised, so the picture cross-fades from one tile's
prediction to the next exactly where each is least sure (its edge has no context beyond it). Edges on the picture's
border keep full weight. Pure tensor math; the caller supplies the model call and the per-tile callback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelCall = Callable[[torch.Tensor], torch.Tensor]
"""``(1, C, h, w)`` in [0, 1] on the CPU -> ``(1, C', h * scale, w * scale)`` on the CPU."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: every ``tile - overlap`` pixels, the last flush with the end."""
    if tile <= 0 or length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _layout(width: int, height: int, tile: int | tuple[int, int], overlap: int) -> tuple[list[int], list[int], int]:
    """Tile starts along x and y, and the overlap used (kept below half a tile)."""
    tile_w, tile_h = (tile, tile) if isinstance(tile, int) else tile
    if tile_w <= 0 or tile_h <= 0:
        return [0], [0], 0
    overlap = max(0, min(overlap, min(tile_w, tile_h) // 2 - 1))
    return tile_starts(width, tile_w, overlap), tile_starts(height, tile_h, overlap), overlap


def tile_count(width: int, height: int, tile: int | tuple[int, int], overlap: int) -> int:
    """How many model calls ``tiled_call`` makes for a ``width`` x ``height`` input."""
    xs, ys, _ = _layout(width, height, tile, overlap)
    return len(xs) * len(ys)


def _ramp(length: int, fade_in: bool, fade_out: bool, fade: int) -> torch.Tensor:
    """Weights along one side of an output tile: rising over ``fade`` pixels from an edge shared with a neighbour."""
    weights = torch.ones(length)
    if fade <= 0:
        return weights
    rise = (torch.arange(length, dtype=torch.float32) + 0.5) / fade
    if fade_in:
        weights = torch.minimum(weights, rise)
    if fade_out:
        weights = torch.minimum(weights, rise.flip(0))
    return weights


def tiled_call(
    call: ModelCall,
    image: torch.Tensor,
    scale: int,
    tile: int | tuple[int, int],
    overlap: int,
    after_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``call`` over ``image`` (1, C, H, W) tile by tile, blended; ``after_tile`` runs after each (it may raise).

    ``tile``: a square side, or ``(width, height)``; 0, or a picture no larger than one tile, is a single call.
    ``overlap`` is kept below half a tile, so a pixel is never at the fading edge of every tile covering it.
    """
    _, _, height, width = image.shape
    tile_w, tile_h = (tile, tile) if isinstance(tile, int) else tile
    xs, ys, overlap = _layout(width, height, tile, overlap)
    if len(xs) == 1 and len(ys) == 1:
        out = call(image)
        if after_tile is not None:
            after_tile()
        return out
    total: torch.Tensor | None = None
    weight = torch.zeros(1, 1, height * scale, width * scale)
    fade = overlap * scale
    for top in ys:
        for left in xs:
            bottom, right = min(top + tile_h, height), min(left + tile_w, width)
            out = call(image[:, :, top:bottom, left:right]).float()
            if total is None:
                total = torch.zeros(1, out.shape[1], height * scale, width * scale)
            wy = _ramp(out.shape[2], top > 0, bottom < height, fade)
            wx = _ramp(out.shape[3], left > 0, right < width, fade)
            w = (wy[:, None] * wx[None, :])[None, None]
            total[:, :, top * scale : bottom * scale, left * scale : right * scale] += out * w
            weight[:, :, top * scale : bottom * scale, left * scale : right * scale] += w
            if after_tile is not None:
                after_tile()
    assert total is not None
    return total / weight
