"""ControlNet's reference_only / reference_adain(+attn): no ControlNet model, the UNet's self-attention (and block
statistics) shared with the reference picture, through diffusers' attention-processor API, restored after."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image

from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, load_extensions
from pipelines.extensions.state import ExtensionState
from pipelines.generate import Engine
from tests.conftest import TinyModels
from tests.test_controlnet import builtins, cn_dir, diff, engine, pixels, request, unit  # noqa: F401  (fixtures)
from tests.test_controlnet_prep import photo


@pytest.fixture
def reference() -> Iterator[Any]:
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    yield importlib.import_module(MODULE_PREFIX + "controlnet.reference")
    extensions.unload()


def ref_unit(**values: Any) -> dict[str, Any]:
    return unit(**({"model": "None", "module": "reference_only", "image": photo(64, 64)} | values))


def test_shared_attention_attends_to_the_reference_tokens_and_blends_uncond_by_fidelity(reference: Any) -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    inner = attn.processor
    bank = reference.Bank()
    layer = reference.SharedSelfAttention(inner, bank, rank=0.3)
    own, ref = torch.randn(4, 10, 16), torch.randn(4, 12, 16)  # rows 0-1 conditional, 2-3 unconditional
    with torch.no_grad():
        assert torch.equal(layer(attn, own), inner(attn, own))  # off: exactly the layer's own processor
        bank.mode, bank.attn_weight, bank.fidelity = "write", 0.3, 0.25
        layer(attn, ref)
        assert not layer.tokens  # ranked at the unit's weight: not below it, so it does not take part
        bank.attn_weight = 0.5
        layer(attn, ref)
        assert len(layer.tokens) == 1
        bank.mode, bank.uncond = "read", slice(2, 4)
        out = layer(attn, own)
        shared = inner(attn, own, encoder_hidden_states=torch.cat([own, ref], dim=1))
        plain = inner(attn, own)
    assert torch.allclose(out[:2], shared[:2], atol=1e-6)  # the conditional rows see the reference
    assert torch.allclose(out[2:], 0.25 * plain[2:] + 0.75 * shared[2:], atol=1e-6)
    assert not layer.tokens  # read once, then forgotten


def test_attention_ranks_widest_first_and_weight_selects_layers(tiny: TinyModels, reference: Any) -> None:
    unet = tiny.components("sdxl")["unet"]
    names = [n for n in unet.attn_processors if n.endswith("attn1.processor")]
    ranks = reference.attention_ranks(unet, names)
    assert sorted(ranks.values()) == [i / len(names) for i in range(len(names))]
    width = {n: unet.get_submodule(n.removesuffix(".processor")).to_q.in_features for n in names}
    widest = max(width.values())
    assert all(
        width[n] == widest for n, r in ranks.items() if r < sum(w == widest for w in width.values()) / len(names)
    )
    layers = reference.adain_layers(unet)
    assert layers[0] == (unet.mid_block, 0.0) and all(0 <= rank <= 2 for _, rank in layers)


def test_reference_sample_is_the_picture_noised_to_the_sigma(tiny: TinyModels, reference: Any) -> None:
    from pipelines.imaging.latents import encode_images
    from pipelines.sampling.denoiser import Conditioning, ModelInputs, SamplingState

    vae = tiny.components("sd1")["vae"]
    units = importlib.import_module(MODULE_PREFIX + "controlnet.units")
    ref = units.parse_unit({"module": "reference_only", "image": photo(64, 64)}, 0)
    sharing = reference.ReferenceSharing(None, vae, "sd1", seed=3, modules=["reference_only"])
    cond = torch.zeros(1, 77, 8)
    state = SamplingState(torch.zeros(1, 4, 8, 8), torch.tensor([2.0, 0.0]), Conditioning(cond, cond), 1)
    sigma = torch.tensor([2.0, 2.0])
    inputs = ModelInputs(
        torch.zeros(2, 4, 8, 8), torch.tensor([500.0, 500.0]), cond.repeat(2, 1, 1), sigma=sigma, state=state
    )
    sample = sharing._reference_sample(ref, photo(64, 64), inputs)
    latents = encode_images(vae, [photo(64, 64)])
    noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(3))
    assert torch.allclose(sample, ((latents + 2.0 * noise) / 5**0.5).expand(2, -1, -1, -1), atol=1e-6)
    nine = replace(inputs, sample=torch.ones(2, 9, 8, 8))  # a 9-channel inpaint UNet: nothing masked, the picture
    extended = sharing._reference_sample(ref, photo(64, 64), nine)
    assert extended.shape == (2, 9, 8, 8) and not extended[:, 4].any()
    assert torch.allclose(extended[:, 5:], latents.expand(2, -1, -1, -1))


def test_reference_weight_zero_is_no_unit_and_weight_one_changes_the_image(engine: Engine) -> None:  # noqa: F811
    unet = engine.manager.activate("tiny-sd1.safetensors").model.unet
    before = dict(unet.attn_processors)
    plain = pixels(engine, request())
    assert np.array_equal(pixels(engine, request(ref_unit(weight=0.0))), plain)
    # installed but outside its window: the wrapping processors pass through exactly
    assert np.array_equal(pixels(engine, request(ref_unit(guidance_end=0.0))), plain)
    result = engine.generate(request(ref_unit()))
    shared = np.asarray(result.images[0], dtype=np.int16)
    assert diff(shared, plain) > 0.5
    assert 'ControlNet 0: "Module: reference_only, Model: None, Weight: 1' in result.infotexts[0]
    other = pixels(engine, request(ref_unit(image=Image.fromarray(255 - np.asarray(photo(64, 64))))))
    # another picture, another image; only slightly on these test models: the tiny random VAE's latents (~0.04) are
    # far smaller than the noise they are mixed with (the write pass is noise-dominated, test_reference_sample)
    assert not np.array_equal(other, shared)
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # the same objects back
    assert not any(m._forward_hooks for m in unet.modules())


def test_fidelity_window_and_adain_variants(engine: Engine) -> None:  # noqa: F811
    unet = engine.manager.activate("tiny-sd1.safetensors").model.unet
    types = {k: type(v) for k, v in unet.attn_processors.items()}
    full = pixels(engine, request(ref_unit(threshold_a=0.0)))
    faithful = pixels(engine, request(ref_unit(threshold_a=1.0)))
    assert diff(full, faithful) > 0.1  # style fidelity reaches the unconditional rows
    plain = pixels(engine, request())
    # on the tiny model the first step (sigma 14.6) carries nearly all of the reference's visible effect
    early = pixels(engine, request(ref_unit(threshold_a=0.0, guidance_end=0.3)))  # step 0 of 3 only
    late = pixels(engine, request(ref_unit(threshold_a=0.0, guidance_start=0.3)))  # steps 1 and 2
    assert diff(early, plain) > 0.05 and diff(late, full) > 0.05
    adain = pixels(engine, request(ref_unit(module="reference_adain")))
    both = pixels(engine, request(ref_unit(module="reference_adain+attn", threshold_a=0.0)))
    assert diff(adain, plain) > 0.2 and diff(both, full) > 0.1 and diff(both, adain) > 0.1
    assert {k: type(v) for k, v in unet.attn_processors.items()} == types
    assert not any(m._forward_hooks for m in unet.modules())  # the AdaIN hooks are gone


def test_reference_with_a_controlnet_unit_and_on_sdxl(engine: Engine) -> None:  # noqa: F811
    both = pixels(engine, request(ref_unit(), unit()))  # a ControlNet unit beside it still adds its residuals
    assert diff(both, pixels(engine, request(ref_unit()))) > 0.2
    unet = engine.manager.activate("sub/tiny-sdxl.safetensors").model.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    plain = pixels(engine, request())
    shared = pixels(engine, request(ref_unit()))
    assert diff(shared, plain) > 0.5
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_hires_pass_with_reference_and_inpaint_only_units(engine: Engine) -> None:  # noqa: F811
    from tests.api_support import b64
    from tests.test_controlnet_prep import box_mask

    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    plain = pixels(engine, request(**hires))
    both = pixels(engine, request(ref_unit(), **hires))
    low = pixels(engine, request(ref_unit(hr_option="Low res only"), **hires))
    assert both.shape == (128, 128, 3) and diff(both, plain) > 0.2
    assert not np.array_equal(both, low)  # the second pass shares too (faintly here: lower sigmas, fidelity 0)
    picture = photo(64, 64)
    mask = b64(box_mask((64, 64), (16, 16, 48, 48)))
    kept = pixels(engine, request(unit(module="inpaint_only", image=picture, mask=mask), **hires))
    ring = np.ones((128, 128), dtype=bool)
    ring[24:104, 24:104] = False  # the mask at the hires size (32..96), grown and feathered by 7 px
    source = np.asarray(picture.resize((128, 128), Image.BICUBIC), dtype=np.int16)
    assert np.array_equal(kept[ring], source[ring])
