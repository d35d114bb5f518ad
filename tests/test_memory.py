"""The memory policy on real (tiny) modules: tiled VAE decode, fp8 storage, the offload hooks, the OOM retry."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo.exc

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.imaging.latents import decode_latents
from pipelines.imaging.tiled_vae import tile_size
from pipelines.models.tiny_models import build_tiny_components
from pipelines.requests import GenerationRequest
from pipelines.runtime.memory_policy import GROUP_BLOCK, GROUP_LEAF, LEVELS, MODEL_OFFLOAD, RESIDENT, MemoryPlan
from pipelines.runtime.placement import FP8_STORAGE, configure_vae, is_out_of_memory

CHECKPOINT = "tiny-sd1.safetensors"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def smooth_latent(size: int, channels: int = 4) -> torch.Tensor:
    """Low-frequency waves in every channel: what a real image's latent looks like at tile scale."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    waves = [torch.sin(2 * math.pi * (x * (c + 1) / 3 + y * (c % 2 + 1) / 4) + c) for c in range(channels)]
    return torch.stack(waves)[None] * 0.8


def plan(mode: str = RESIDENT, tiled: bool = False, sliced: bool = False, tile: int = 512) -> MemoryPlan:
    return MemoryPlan(mode, tiled, sliced, tile, f"test: {mode}")


def request(**overrides: object) -> GenerationRequest:
    values: dict = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 5, "save": False}
    return GenerationRequest(**(values | overrides))


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path) -> Engine:
    engine = make_engine(tmp_path)
    engine.manager.activate(CHECKPOINT)
    return engine


def pixels(engine: Engine, **overrides: object) -> np.ndarray:
    result = engine.generate(request(**overrides))
    return np.stack([np.asarray(image) for image in result.images])


# -- VAE tiling ---------------------------------------------------------------------------------------------
def test_tiled_decode_matches_untiled_and_really_tiles():
    vae = build_tiny_components("sd1", seed=3)["vae"]
    latents = smooth_latent(40)  # 320x320 pixels in tiles of at most 128 pixels (16 latents): 3x3 of them
    configure_vae(vae, plan(tiled=False))
    assert tile_size(vae) is None
    whole = np.asarray(decode_latents(vae, latents)[0])
    configure_vae(vae, plan(tiled=True, tile=128))
    assert tile_size(vae) == 128 and not vae.use_tiling  # Easel's exact tiling, not diffusers' blended one
    calls: list[tuple[int, ...]] = []
    last = vae.decoder.up_blocks[-1].resnets[0].conv1  # full resolution: each tile passes once
    handle = last.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    try:
        tiled = np.asarray(decode_latents(vae, latents)[0])
    finally:
        handle.remove()
    assert len(calls) == 9 and max(max(s[-2:]) for s in calls) < 128 + 2 * 8  # a core plus a few pixels of margin
    assert tiled.shape == whole.shape
    # Every tile normalises with the whole picture's GroupNorm statistics and sees real neighbours within the
    # decoder's receptive field, so the tiles agree with the whole decode up to float rounding.
    assert psnr(whole, tiled) >= 35
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_sliced_decode_is_exact_per_image():
    vae = build_tiny_components("sd1", seed=3)["vae"]
    latents = torch.cat([smooth_latent(8), -smooth_latent(8)])
    configure_vae(vae, plan())
    together = [np.asarray(im) for im in decode_latents(vae, latents)]
    configure_vae(vae, plan(sliced=True))
    sliced = [np.asarray(im) for im in decode_latents(vae, latents)]
    assert all(psnr(a, b) > 50 for a, b in zip(together, sliced, strict=True))  # batch vs single: 1 level at most


# -- fp8 storage --------------------------------------------------------------------------------------------
def test_fp8_storage_round_trips_and_changes_outputs_only_within_tolerance(engine: Engine):
    active = engine.manager.active
    unet = active.model.unet
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = unet(x, 500, encoder_hidden_states=cond).sample
    full_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    engine.manager.memory.settings.fp8_weights = True
    engine.manager.memory.apply(active, plan())
    linear = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert linear.weight.dtype == FP8_STORAGE
    assert unet.conv_norm_out.weight.dtype == torch.float32  # norms stay in the compute dtype
    assert unet.dtype == torch.float32  # what callers see: the compute dtype
    stored = linear.weight.detach().clone()
    with torch.no_grad():
        first = unet(x, 500, encoder_hidden_states=cond).sample
        second = unet(x, 500, encoder_hidden_states=cond).sample
    assert linear.weight.dtype == FP8_STORAGE and torch.equal(linear.weight.view(torch.uint8), stored.view(torch.uint8))
    assert torch.equal(first, second)  # storing again after each layer's use loses nothing more
    error = float((first - reference).norm() / reference.norm())
    assert 0 < error < 0.1, error
    assert sum(p.numel() * p.element_size() for p in unet.parameters()) < 0.35 * full_bytes  # fp32 -> fp8
    result = engine.generate(request())
    assert "FP8 weight: Enable" in result.infotexts[0]
    engine.manager.memory.settings.fp8_weights = False
    notes: list[str] = []
    engine.manager.memory.apply(active, plan(), notes)
    assert linear.weight.dtype == FP8_STORAGE and "until it is loaded again" in notes[0]  # diffusers cannot undo it
    assert "FP8 weight: Enable" in engine.generate(request()).infotexts[0]  # still true of these pixels


# -- the offload levels, on real modules ----------------------------------------------------------------------
def _pre_hooks(module: torch.nn.Module) -> int:
    """Offload hooks on a module: accelerate's (a component moved whole) and torch's (a self-placing UNet's)."""
    return int(hasattr(module, "_hf_hook")) + len(module._forward_pre_hooks)


def _group_hooked(module: torch.nn.Module) -> bool:
    return any(
        getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("group_offloading") is not None
        for m in module.modules()
    )


def test_every_level_makes_the_same_image_and_hooks_come_and_go(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    active = engine.manager.active
    model = active.model
    baseline = pixels(engine)
    policy = engine.manager.memory
    for mode in (*LEVELS, MODEL_OFFLOAD, RESIDENT):
        monkeypatch.setattr(policy, "plan", lambda _active, _size, _extra=(), mode=mode: plan(mode))
        assert np.array_equal(pixels(engine), baseline), mode
        assert policy.last_plan is not None and policy.last_plan.mode == mode
        offload = active.placement.offload
        if mode == RESIDENT:
            assert offload is None and _pre_hooks(model.unet) == 0 and not _group_hooked(model.unet)
        else:
            assert all(_pre_hooks(m) == 1 for m in model.modules())  # installed once, whatever the repeats
            assert offload.holder is None  # every component back in RAM after the request
            assert _group_hooked(model.unet) == (mode in (GROUP_BLOCK, GROUP_LEAF))
    policy.apply(active, plan(MODEL_OFFLOAD))
    policy.apply(active, plan(MODEL_OFFLOAD))
    assert _pre_hooks(model.unet) == 1


def test_unet_attention_uses_sdpa(engine: Engine):
    processors = engine.manager.active.model.unet.attn_processors.values()
    assert processors and {type(p).__name__ for p in processors} == {"AttnProcessor2_0"}


# -- out of memory ---------------------------------------------------------------------------------------------
def _fail_unet(monkeypatch: pytest.MonkeyPatch, engine: Engine, error: Callable[[], Exception], times: int) -> list:
    unet = engine.manager.active.model.unet
    original = unet.forward
    raised: list[Exception] = []

    def forward(*args, **kwargs):
        if len(raised) < times:
            raised.append(error())
            raise raised[-1]
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    return raised


def test_out_of_memory_steps_down_once_and_says_so(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    baseline = pixels(engine)
    raised = _fail_unet(monkeypatch, engine, lambda: torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"), 1)
    result = engine.generate(request())
    assert len(raised) == 1
    assert np.array_equal(np.stack([np.asarray(im) for im in result.images]), baseline)
    assert any(
        "Ran out of cpu memory with resident; retried once with model offload, VAE tiled" in w for w in result.warnings
    ), result.warnings
    assert engine.manager.memory.last_plan.mode == MODEL_OFFLOAD
    assert engine.manager.memory.status()["plan"]["reason"].startswith("stepped down from resident")
    after = engine.generate(request())  # the next request is decided afresh: back to resident, hooks gone
    assert not after.warnings and engine.manager.memory.last_plan.mode == RESIDENT
    assert _pre_hooks(engine.manager.active.model.unet) == 0


def test_out_of_memory_twice_is_a_clear_error_and_the_engine_goes_on(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    raised = _fail_unet(monkeypatch, engine, lambda: RuntimeError("MPS backend out of memory (MPS allocated)"), 2)
    with pytest.raises(EaselError, match="out of cpu memory at 64x64 even with model offload, VAE tiled"):
        engine.generate(request())
    assert len(raised) == 2
    assert len(engine.generate(request()).images) == 1


def test_other_errors_are_not_retried(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    raised = _fail_unet(monkeypatch, engine, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 5)
    with pytest.raises(RuntimeError, match="shapes"):
        engine.generate(request())
    assert len(raised) == 1


def test_is_out_of_memory_follows_causes():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise ValueError("while decoding") from inner
    except ValueError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(RuntimeError("index out of range"))


# -- torch.compile ------------------------------------------------------------------------------------------------
def test_compile_is_announced_once_per_size_and_falls_back_cleanly(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    unet = engine.manager.active.model.unet
    compiled: list[bool] = []
    monkeypatch.setattr(unet, "compile", lambda *a, **k: compiled.append(True))  # compiling for real takes minutes
    policy = engine.manager.memory
    policy.settings.compile = True
    first = engine.generate(request())
    assert compiled == [True] and any("first 64x64 image" in w for w in first.warnings)
    assert not engine.generate(request(seed=9)).warnings  # same size: reused, nothing to announce
    assert any("first 128x64" in w for w in engine.generate(request(width=128)).warnings)
    raised = _fail_unet(monkeypatch, engine, lambda: torch._dynamo.exc.InternalTorchDynamoError("no compiler"), 1)
    result = engine.generate(request(width=64, height=128))
    assert len(raised) == 1 and len(result.images) == 1
    assert any("torch.compile failed here" in w and "no compiler" in w for w in result.warnings), result.warnings
    assert policy.status()["compile"] is False and "no compiler" in policy.status()["compile_error"]
    assert not engine.manager.active.placement.compiled
