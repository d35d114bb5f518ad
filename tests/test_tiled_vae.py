"""Easel's exact tiled VAE (pipelines.imaging.tiled_vae) against the whole decode/encode, on the tiny VAE."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from pipelines.imaging import tiled_vae
from pipelines.imaging.latents import decode_latents, encode_pixels
from pipelines.models.tiny_models import build_tiny_components
from pipelines.runtime.memory_policy import RESIDENT, MemoryPlan
from pipelines.runtime.placement import configure_vae


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def waves(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Smooth, different in every sample and channel: like a real latent (or picture) at tile scale."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return (
        torch.stack(
            [
                torch.stack(
                    [
                        torch.sin(2 * math.pi * (x * (c + 1) / 3 + y * (c % 2 + 1 + n) / 4) + c + n)
                        for c in range(channels)
                    ]
                )
                for n in range(batch)
            ]
        )
        * 0.8
    )


def tiled(tile: int, sliced: bool = False) -> MemoryPlan:
    return MemoryPlan(RESIDENT, True, sliced, tile, "test")


def whole(sliced: bool = False) -> MemoryPlan:
    return MemoryPlan(RESIDENT, False, sliced, 512, "test")


def count_tiles(module: torch.nn.Module) -> list[tuple[int, ...]]:
    """Shapes of what ``module`` is called with, until the test ends (a full-resolution layer: once per tile)."""
    calls: list[tuple[int, ...]] = []
    module.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    return calls


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    return build_tiny_components("sd1", seed=3)["vae"]


def test_odd_latent_sizes_and_a_batch_decode_as_whole(vae: torch.nn.Module):
    latents = waves(2, 4, 7, 11)  # 56x88 pixels: 2x3 tiles of at most 32 pixels, of uneven sizes
    configure_vae(vae, whole())
    reference = [np.asarray(im) for im in decode_latents(vae, latents)]
    for sliced in (False, True):
        configure_vae(vae, tiled(32, sliced))
        calls = count_tiles(vae.decoder.conv_out)
        pictures = [np.asarray(im) for im in decode_latents(vae, latents)]
        vae.decoder.conv_out._forward_pre_hooks.clear()
        assert len(calls) == (12 if sliced else 6)  # 6 tiles, once per image when sliced
        assert {s[0] for s in calls} == ({1} if sliced else {2})
        assert [p.shape for p in pictures] == [(56, 88, 3)] * 2
        for a, b in zip(reference, pictures, strict=True):
            assert psnr(a, b) >= 35, psnr(a, b)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding, nothing more
    assert not np.array_equal(reference[0], reference[1])  # the batch really holds two pictures


def test_tiles_match_the_whole_decode_in_float(vae: torch.nn.Module):
    z = waves(1, 4, 16, 24) * 4
    with torch.no_grad():
        reference = vae.decode(z).sample
    calls = count_tiles(vae.decoder.up_blocks[-1].resnets[-1].conv2)
    exact = tiled_vae.decode(vae, z, 32)  # 4 latent cores: a tile is mostly margin, many seams to get wrong
    vae.decoder.up_blocks[-1].resnets[-1].conv2._forward_pre_hooks.clear()
    assert len(calls) == 4 * 6
    assert float((exact - reference).abs().max()) < 1e-4
    # Latent pixels the tiles start with: the up blocks' 3x3 convolutions, 2 per resnet, halved at each upsampler.
    assert tiled_vae.receptive_field(vae) == {"decoder": 9, "decoder_whole": 14, "encoder": 45}


def test_tiled_encode_matches_whole(vae: torch.nn.Module):
    pixels = waves(2, 3, 40, 200).clamp(-1, 1)  # 5x25 latents: odd, and not a whole number of 32 px tiles
    configure_vae(vae, whole())
    reference = encode_pixels(vae, pixels)
    configure_vae(vae, tiled(32))
    calls = count_tiles(vae.encoder.conv_in)
    latents = encode_pixels(vae, pixels)
    vae.encoder.conv_in._forward_pre_hooks.clear()
    assert len(calls) == 2 * 7 and max(s[-1] for s in calls) <= 32 + 2 * 45 < 200  # a core and the encoder's margin
    assert latents.shape == reference.shape == (2, 4, 5, 25)
    assert float((latents - reference).abs().max()) < 1e-4 * float(reference.abs().max())


def test_small_images_decode_whole_and_tiling_turns_off(vae: torch.nn.Module):
    configure_vae(vae, tiled(64))
    calls = count_tiles(vae.decoder.conv_out)
    decode_latents(vae, waves(1, 4, 8, 8))  # 64 pixels: one tile, so no tiling at all
    vae.decoder.conv_out._forward_pre_hooks.clear()
    assert len(calls) == 1 and calls[0][-1] == 64
    configure_vae(vae, whole())
    assert tiled_vae.tile_size(vae) is None and not vae.use_tiling


def test_fp16_vae_that_overflows_is_upcast_and_still_tiled(caplog: pytest.LogCaptureFixture):
    vae = build_tiny_components("sd1", seed=3)["vae"]
    conv = vae.decoder.up_blocks[1].resnets[0].conv1  # past the mid block: inside the tiled part
    with torch.no_grad():  # outputs past fp16's 65504 (inf, then NaN at the next GroupNorm), ordinary in fp32
        conv.weight.mul_(1e3)
        conv.bias.fill_(65000.0)
    vae.register_to_config(force_upcast=False)  # else it runs in fp32 from the start (AutoencoderKL's default)
    vae.to(torch.float16)
    latents = waves(1, 4, 16, 16)
    configure_vae(vae, tiled(64))
    calls = count_tiles(vae.decoder.conv_out)
    with caplog.at_level(logging.WARNING, logger="pipelines.imaging.latents"):
        picture = np.asarray(decode_latents(vae, latents)[0])
    assert any("upcasting it to fp32" in r.message for r in caplog.records)
    assert vae.dtype == torch.float32
    assert len(calls) == 2 * 4  # 2x2 tiles in fp16 (NaN), then again in fp32
    configure_vae(vae, whole())
    reference = np.asarray(decode_latents(vae, latents)[0])
    assert psnr(reference, picture) >= 35 and reference.std() > 5  # a picture, the same one


def test_layouts_it_does_not_know_keep_diffusers_tiling():
    vae = build_tiny_components("sd1", seed=3)["vae"]
    assert tiled_vae.supports(vae)
    vae.decoder.up_blocks[0].upsamplers[0].interpolate = False  # no longer a nearest x2 upsampler
    assert not tiled_vae.supports(vae)
    configure_vae(vae, tiled(64))
    assert tiled_vae.tile_size(vae) is None
    assert vae.use_tiling and vae.tile_sample_min_size == 64 and vae.tile_latent_min_size == 8
