"""Tiled VAE decode and encode that give the whole-image result, not an approximation of it.

diffusers' ``AutoencoderKL`` tiling decodes each tile as a picture of its own and blends the overlaps: every
GroupNorm then normalises with that tile's statistics and every convolution near a tile edge sees zeros instead of
the neighbour, so tiles disagree with the whole decode (14-17 dB PSNR on a random-weight VAE). Here, in the spirit
of the multidiffusion "Tiled VAE" (pkuliyi2015) for A1111, the tiles run through the network together, one layer
at a time:

- each tile carries a margin of at least the receptive field of the layers still to run, so its core (the part it
  owns) is computed from real neighbours; the margin shrinks with the remaining receptive field as the layers go,
  which keeps the overlap (and the memory it costs) small at the full-resolution layers where it would be dearest;
- before every GroupNorm the per-group mean and variance are merged over all tiles' cores (pixel-count weighted,
  Chan's pairwise form of sum / sum of squares, stable in float32), so every tile normalises with the statistics
  of the whole image;
- the parts that need the whole image at once (the mid block with its attention) run on the whole map at latent
  resolution, 1/64 of the pixels, where the attention is torch SDPA (memory-efficient kernels on CUDA and CPU);
- each output tile is cropped to its core and pasted: no blending, since neighbouring cores agree.

The result equals the untiled decode up to float rounding. On a GPU the tiles wait in RAM between layers, so the
device holds the weights, the latent-resolution mid block and one tile's working set at a time.

Only the layouts of SD 1/2/XL/3/Flux VAEs (``Encoder``/``Decoder`` of ResnetBlock2D, nearest Upsample2D and
padding-0 Downsample2D blocks with GroupNorm) are handled; ``supports`` says so, and the memory policy keeps
diffusers' own tiling for anything else.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_TILES: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
"""The tile side (pixels) set on a VAE by the memory policy; absent: decode whole."""


def set_tiling(vae: Any, tile: int | None) -> bool:
    """Tile ``vae``'s decode/encode at ``tile`` pixels a side (None: off). False when its layout is not handled."""
    _TILES.pop(vae, None)
    if tile is None:
        return True
    if not supports(vae):
        return False
    _TILES[vae] = max(tile, _scale(vae))
    return True


def tile_size(vae: Any) -> int | None:
    """The tile side in pixels set by ``set_tiling``, or None when this VAE decodes whole."""
    return _TILES.get(vae)


def enable_diffusers_tiling(vae: Any, tile: int) -> None:
    """AutoencoderKL's own (blended, approximate) tiling at ``tile`` pixels: for layouts ``supports`` refuses."""
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = tile, max(1, tile // _scale(vae))


def decode_maybe_tiled(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z).sample``, tiled when ``set_tiling`` asked for it and the latent is larger than a tile."""
    tile = tile_size(vae)
    if tile is not None and max(z.shape[-2:]) * _scale(vae) > tile:
        return decode(vae, z, tile)
    return vae.decode(z).sample


def encode_maybe_tiled(vae: Any, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``vae.encode(x).latent_dist``, tiled when ``set_tiling`` asked for it and x is larger than a tile."""
    tile = tile_size(vae)
    if tile is not None and max(x.shape[-2:]) > tile:
        return encode(vae, x, tile)
    return vae.encode(x).latent_dist.mode()


# -- the layers, as a list of steps that each know how far they see -------------------------------------------
def _conv_radius(conv: Any, stride: int = 1, padding: int | None = None) -> int:
    """How many pixels a stride-1 'same' convolution looks past each output pixel; ValueError for other convs."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{type(conv).__name__} is not a Conv2d")
    k = conv.kernel_size
    want = k[0] // 2 if padding is None else padding
    if (
        k[0] != k[1]
        or k[0] % 2 == 0
        or conv.stride != (stride, stride)
        or conv.padding != (want, want)
        or conv.dilation != (1, 1)
        or conv.padding_mode != "zeros"
    ):
        raise ValueError(f"unhandled convolution {conv}")
    return k[0] // 2


def _norm(norm: Any) -> nn.GroupNorm:
    if not isinstance(norm, nn.GroupNorm):
        raise ValueError(f"{type(norm).__name__} is not a GroupNorm")
    return norm


@dataclass
class _Step:
    """One layer run over all tiles: ``kind`` is resnet, up, down, conv or norm_conv."""

    kind: str
    module: Any
    norm: nn.GroupNorm | None = None  # the GroupNorm the step starts with (its statistics are gathered before it)

    def margin_before(self, after: int) -> int:
        """Margin (pixels at the step's input resolution) needed so that ``after`` is exact at its output."""
        m = self.module
        if self.kind == "resnet":
            return after + _conv_radius(m.conv1) + _conv_radius(m.conv2)
        if self.kind == "up":
            return math.ceil((after + _conv_radius(m.conv)) / 2)
        if self.kind == "down":  # stride-2 3x3, zero column right/bottom: sees 2j..2j+2; kept even for alignment
            return 2 * after + 2
        if self.kind == "conv":
            return after + _conv_radius(m)
        return after + _conv_radius(m[2])  # norm_conv: (norm, act, conv)


def _resnet_step(block: Any) -> _Step:
    if block.upsample is not None or block.downsample is not None or block.time_emb_proj is not None:
        raise ValueError("resnet with up/downsampling or a time embedding")
    if block.time_embedding_norm not in ("default", "group"):
        raise ValueError(f"resnet norm {block.time_embedding_norm}")
    _norm(block.norm1), _norm(block.norm2), _conv_radius(block.conv1), _conv_radius(block.conv2)
    if block.conv_shortcut is not None and _conv_radius(block.conv_shortcut) != 0:
        raise ValueError("resnet shortcut wider than 1x1")
    return _Step("resnet", block, block.norm1)


def _decoder_steps(decoder: Any) -> list[_Step]:
    steps: list[_Step] = []
    for block in decoder.up_blocks:
        if getattr(block, "attentions", None) is not None:
            raise ValueError("attention in an up block")
        steps += [_resnet_step(r) for r in block.resnets]
        for up in block.upsamplers or ():
            if up.norm is not None or up.use_conv_transpose or not up.interpolate or not up.use_conv:
                raise ValueError("upsampler other than nearest x2 + conv")
            _conv_radius(up.conv)
            steps.append(_Step("up", up))
    norm = _norm(decoder.conv_norm_out)
    _conv_radius(decoder.conv_out)
    return [*steps, _Step("norm_conv", (norm, decoder.conv_act, decoder.conv_out), norm)]


def _encoder_steps(encoder: Any) -> list[_Step]:
    _conv_radius(encoder.conv_in)
    steps = [_Step("conv", encoder.conv_in)]
    for block in encoder.down_blocks:
        if getattr(block, "attentions", None) is not None:
            raise ValueError("attention in a down block")
        steps += [_resnet_step(r) for r in block.resnets]
        for down in block.downsamplers or ():
            if down.norm is not None or not down.use_conv or down.padding != 0:
                raise ValueError("downsampler other than padding-0 stride-2 conv")
            if _conv_radius(down.conv, stride=2, padding=0) != 1:
                raise ValueError("downsampler kernel other than 3x3")
            steps.append(_Step("down", down))
    return steps


def _margins(steps: list[_Step]) -> list[int]:
    """``margins[i]``: what step i's input needs; ``margins[-1]`` (= 0) is the end's."""
    out = [0]
    for step in reversed(steps):
        out.append(step.margin_before(out[-1]))
    return out[::-1]


def supports(vae: Any) -> bool:
    """Whether this VAE's layout is one the exact tiling knows (AutoencoderKL as SD, SDXL, SD3 and Flux ship it)."""
    try:
        _decoder_steps(vae.decoder)
        _encoder_steps(vae.encoder)
        _ = vae.quant_conv, vae.post_quant_conv, vae.use_slicing, vae.decoder.conv_in, vae.decoder.mid_block
        _ = vae.encoder.mid_block, vae.encoder.conv_norm_out, vae.encoder.conv_act, vae.encoder.conv_out
    except (AttributeError, ValueError, TypeError):
        return False
    return True


def _scale(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def receptive_field(vae: Any) -> dict[str, int]:
    """Margins the tiles start with: decoder in latent pixels (after the whole-image mid block), encoder in pixels.

    ``decoder_whole`` adds conv_in and the mid block's resnets, i.e. what tiles would need without running the mid
    block whole (its attention sees everything regardless).
    """
    dec = _margins(_decoder_steps(vae.decoder))[0]
    mid = sum(_conv_radius(r.conv1) + _conv_radius(r.conv2) for r in vae.decoder.mid_block.resnets)
    return {
        "decoder": dec,
        "decoder_whole": dec + mid + _conv_radius(vae.decoder.conv_in),
        "encoder": _margins(_encoder_steps(vae.encoder))[0],
    }


# -- GroupNorm statistics over all tiles -----------------------------------------------------------------------
@dataclass
class _Stats:
    """Per-sample, per-group count, mean and sum of squared deviations (float32), mergeable across tiles."""

    count: int
    mean: torch.Tensor  # [N, G]
    m2: torch.Tensor

    @staticmethod
    def of(x: torch.Tensor, groups: int) -> _Stats:
        flat = x.reshape(x.shape[0], groups, -1).float()
        var, mean = torch.var_mean(flat, dim=-1, correction=0)
        return _Stats(flat.shape[-1], mean, var * flat.shape[-1])

    def merge(self, other: _Stats | None) -> _Stats:
        """Chan et al.'s pairwise update: one pass over both's numbers, without sum-of-squares cancellation."""
        if other is None:
            return self
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / count)
        return _Stats(count, mean, m2)


def _group_norm(x: torch.Tensor, norm: nn.GroupNorm, stats: _Stats) -> torch.Tensor:
    """``norm(x)`` with the given (whole-image) statistics instead of x's own; computed in float32."""
    per = x.shape[1] // norm.num_groups
    rstd = torch.rsqrt(stats.m2 / stats.count + norm.eps)
    scale = rstd.repeat_interleave(per, dim=1)
    shift = -stats.mean.repeat_interleave(per, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight.float()
        shift = shift * norm.weight.float() + norm.bias.float()
    y = torch.addcmul(shift[:, :, None, None], x.float(), scale[:, :, None, None])
    return y.to(x.dtype)


# -- tiles -----------------------------------------------------------------------------------------------------
@dataclass
class _Tile:
    """A tile's tensor, where its top-left pixel sits in the image, and the box it owns: all at the current scale."""

    data: torch.Tensor
    top: int
    left: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1

    def box(self, margin: int, height: int, width: int) -> tuple[int, int, int, int]:
        y0, y1, x0, x1 = self.core
        return max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)

    def crop(self, t: torch.Tensor, top: int, left: int, box: tuple[int, int, int, int]) -> torch.Tensor:
        """``t`` (whose pixel [0, 0] is image pixel (top, left)) cut to ``box``; copied when that frees memory."""
        y0, y1, x0, x1 = box
        if y0 < top or x0 < left or y1 > top + t.shape[-2] or x1 > left + t.shape[-1]:
            raise AssertionError(f"tile at {(top, left)} {tuple(t.shape[-2:])} does not cover {box}")
        view = t[..., y0 - top : y1 - top, x0 - left : x1 - left]
        return view.clone() if view.numel() < 0.9 * t.numel() else view


def _split(cores_h: int, cores_w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Core boxes covering a ``cores_h`` x ``cores_w`` grid with tiles of at most ``tile`` a side, evenly sized."""

    def cuts(n: int) -> list[int]:
        parts = max(1, math.ceil(n / tile))
        return [round(i * n / parts) for i in range(parts + 1)]

    ys, xs = cuts(cores_h), cuts(cores_w)
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


class _Run:
    """Tiles going through a list of steps in lockstep, with the statistics each GroupNorm needs."""

    def __init__(self, device: torch.device, store: torch.device, height: int, width: int) -> None:
        self.device, self.store = device, store
        self.height, self.width = height, width
        self.tiles: list[_Tile] = []
        self.count = 0  # tiles the run was split into (for the log and the tests)

    def load(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.store)

    def start(self, whole: torch.Tensor, cores: list[tuple[int, int, int, int]], margin: int) -> None:
        """Cut ``whole`` (on any device) into tiles with ``margin`` pixels around each core."""
        for core in cores:
            tile = _Tile(whole, 0, 0, core)
            y0, _, x0, _ = box = tile.box(margin, self.height, self.width)
            tile.data = self.keep(tile.crop(whole, 0, 0, box).clone())
            tile.top, tile.left = y0, x0
            self.tiles.append(tile)
        self.count = len(cores)

    def stats(
        self, norm: nn.GroupNorm, tensors: list[torch.Tensor] | None = None, origins: list | None = None
    ) -> _Stats:
        """Whole-image statistics for ``norm`` from each tile's core (margins would count pixels twice).

        ``tensors`` (default: the tiles' data) have their pixel [0, 0] at ``origins`` (default: the tiles' corners).
        """
        total: _Stats | None = None
        tensors = tensors or [tile.data for tile in self.tiles]
        origins = origins or [(tile.top, tile.left) for tile in self.tiles]
        for tile, t, (top, left) in zip(self.tiles, tensors, origins, strict=True):
            y0, y1, x0, x1 = tile.core
            core = t[..., y0 - top : y1 - top, x0 - left : x1 - left]
            total = _Stats.of(self.load(core), norm.num_groups).merge(total)
        assert total is not None
        return total

    def map(self, fn: Callable[[_Tile, torch.Tensor], torch.Tensor], margin: int, scale: float = 1.0) -> None:
        """Replace every tile by ``fn(tile, data on the device)``, rescaled by ``scale`` and cut to ``margin``."""
        if scale != 1.0:
            self.height, self.width = int(self.height * scale), int(self.width * scale)
        for tile in self.tiles:
            out = fn(tile, self.load(tile.data))
            if scale != 1.0:
                tile.top, tile.left = int(tile.top * scale), int(tile.left * scale)
                tile.core = tuple(int(c * scale) for c in tile.core)  # type: ignore[assignment]
            box = tile.box(margin, self.height, self.width)
            tile.data = self.keep(tile.crop(out, tile.top, tile.left, box))
            tile.top, tile.left = box[0], box[2]

    def run(self, steps: list[_Step], margins: list[int]) -> None:
        for step, after in zip(steps, margins[1:], strict=True):
            getattr(self, f"_{step.kind}")(step, after)

    def paste(self, out: torch.Tensor) -> torch.Tensor:
        """Every tile's core into ``out`` (the tiles must have no margin left)."""
        for tile in self.tiles:
            y0, y1, x0, x1 = tile.core
            out[..., y0:y1, x0:x1] = tile.data.to(out.device)
        self.tiles = []
        return out

    # -- the steps ---------------------------------------------------------------------------------------------
    def _conv(self, step: _Step, after: int) -> None:
        self.map(lambda _tile, x: step.module(x), after)

    def _norm_conv(self, step: _Step, after: int) -> None:
        norm, act, conv = step.module
        stats = self.stats(norm)
        self.map(lambda _tile, x: conv(act(_group_norm(x, norm, stats))), after)

    def _resnet(self, step: _Step, after: int) -> None:
        block = step.module
        inner = after + _conv_radius(block.conv2)  # what conv1's output must still have
        stats1 = self.stats(block.norm1)
        hidden: list[torch.Tensor | None] = []
        origins: list[tuple[int, int]] = []
        for tile in self.tiles:
            x = self.load(tile.data)
            h = block.conv1(block.nonlinearity(_group_norm(x, block.norm1, stats1)))
            inner_box = tile.box(inner, self.height, self.width)
            hidden.append(self.keep(tile.crop(h, tile.top, tile.left, inner_box)))
            origins.append((inner_box[0], inner_box[2]))
            box = tile.box(after, self.height, self.width)
            x = tile.crop(x, tile.top, tile.left, box)  # only the shortcut needs it now: kept after its 1x1 conv,
            tile.data = self.keep(x if block.conv_shortcut is None else block.conv_shortcut(x))  # often fewer channels
            tile.top, tile.left = box[0], box[2]
        stats2 = self.stats(block.norm2, hidden, origins)  # type: ignore[arg-type]
        for i, tile in enumerate(self.tiles):
            h = self.load(hidden[i])  # type: ignore[arg-type]
            hidden[i] = None  # the stored copy goes as soon as it is loaded
            h = block.conv2(block.dropout(block.nonlinearity(_group_norm(h, block.norm2, stats2))))
            h = tile.crop(h, *origins[i], tile.box(after, self.height, self.width))
            x = self.load(tile.data)
            tile.data = self.keep((x + h) / block.output_scale_factor)

    def _up(self, step: _Step, after: int) -> None:
        up = step.module
        need = step.margin_before(after)

        def fn(tile: _Tile, x: torch.Tensor) -> torch.Tensor:
            box = tile.box(need, self.height // 2, self.width // 2)  # map() has already doubled the size
            x = tile.crop(x, tile.top, tile.left, box)
            tile.top, tile.left = box[0], box[2]
            return up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

        self.map(fn, after, scale=2.0)

    def _down(self, step: _Step, after: int) -> None:
        conv = step.module.conv
        height, width = self.height, self.width

        def fn(tile: _Tile, x: torch.Tensor) -> torch.Tensor:
            if tile.top % 2 or tile.left % 2:
                raise AssertionError("a tile reached a downsampler at an odd offset")
            bottom = 1 if tile.top + x.shape[-2] == height else 0
            right = 1 if tile.left + x.shape[-1] == width else 0
            return conv(F.pad(x, (0, right, 0, bottom)))

        self.map(fn, after, scale=0.5)


def _store_for(device: torch.device) -> torch.device:
    """Where tiles wait between layers: RAM when computing on an accelerator, else where they are."""
    return torch.device("cpu") if device.type != "cpu" else device


# -- decode and encode -----------------------------------------------------------------------------------------
@torch.no_grad()
def decode(vae: Any, z: torch.Tensor, tile: int) -> torch.Tensor:
    """``vae.decode(z).sample`` computed ``tile`` pixels at a time (z: VAE latents on the VAE's device)."""
    if vae.use_slicing and z.shape[0] > 1:
        return torch.cat([decode(vae, one, tile) for one in z.split(1)])
    decoder = vae.decoder
    steps = _decoder_steps(decoder)
    margins = _margins(steps)
    device = z.device
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    h = decoder.mid_block(decoder.conv_in(z), None)  # whole, at latent resolution: attention sees everything
    h = h.to(next(iter(decoder.up_blocks.parameters())).dtype)
    height, width = h.shape[-2:]
    run = _Run(device, _store_for(device), height, width)
    run.start(h, _split(height, width, max(1, tile // _scale(vae))), margins[0])
    del h
    run.run(steps, margins)
    dtype = run.tiles[0].data.dtype
    log.debug("VAE decode in %d tiles", run.count)
    out = torch.empty(z.shape[0], decoder.conv_out.out_channels, run.height, run.width, dtype=dtype, device=run.store)
    return run.paste(out)


@torch.no_grad()
def encode(vae: Any, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The latent distribution's mean of ``vae.encode(x)``, the down blocks computed ``tile`` pixels at a time.

    Images whose sides are not a multiple of the VAE's downscale (8) are encoded whole (diffusers crops them).
    """
    if vae.use_slicing and x.shape[0] > 1:
        return torch.cat([encode(vae, one, tile) for one in x.split(1)])
    encoder = vae.encoder
    scale = _scale(vae)
    height, width = x.shape[-2:]
    if height % scale or width % scale:
        return vae.encode(x).latent_dist.mean
    steps = _encoder_steps(encoder)
    margins = _margins(steps)
    device = next(vae.parameters()).device
    cores = [tuple(c * scale for c in core) for core in _split(height // scale, width // scale, max(1, tile // scale))]
    run = _Run(device, _store_for(device), height, width)
    run.start(x, cores, margins[0])  # type: ignore[arg-type]
    run.run(steps, margins)
    channels = encoder.down_blocks[-1].resnets[-1].conv2.out_channels
    whole = run.paste(torch.empty(x.shape[0], channels, run.height, run.width, dtype=x.dtype, device=device))
    log.debug("VAE encode in %d tiles", run.count)
    h = encoder.mid_block(whole)
    h = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
    if vae.quant_conv is not None:
        h = vae.quant_conv(h)
    return torch.chunk(h, 2, dim=1)[0]
