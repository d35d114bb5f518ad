"""Tiny models of every family, written in the original LDM/SGM layout, read back by diffusers' own converters.

diffusers' ``single_file_utils`` converters are the reference: every tensor must come back bit-identical,
with no missing and no unexpected keys, and converting their output forward again must give the file's keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file

from pipelines.models.ldm_layout import (
    REFINER_TE_PREFIX,
    SD1_TE_PREFIX,
    SD2_TE_PREFIX,
    SDXL_TE1_PREFIX,
    SDXL_TE2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    clip_l_to_ldm,
    ldm_schedule_buffers,
    open_clip_to_ldm,
    pipeline_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from pipelines.models.tiny_models import (
    TINY_FAMILIES,
    build_pipeline,
    build_tiny_components,
    save_diffusers_folder,
    save_single_file,
)

StateDict = dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def components(family: str) -> dict[str, Any]:
    return build_tiny_components(family, seed=0)


@pytest.fixture(scope="module")
def ckpt(family: str, components: dict[str, Any]) -> StateDict:
    return pipeline_to_ldm(family, components)


def _subset(ckpt: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k: v for k, v in ckpt.items() if k.startswith(prefix)}


def _assert_same(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], what: str) -> None:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    different = [k for k in want if got[k].shape != want[k].shape or not torch.equal(got[k], want[k])]
    assert not different, f"{what}: tensors differ: {different[:5]}"


def _without_text_model(sd: Mapping[str, torch.Tensor]) -> StateDict:
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _text_encoders(family: str) -> list[tuple[str, str, str]]:
    """(component, layout, prefix) for each text encoder of a family's single file."""
    if family.startswith("sd1"):
        return [("text_encoder", "clip", SD1_TE_PREFIX)]
    if family.startswith("sd2"):
        return [("text_encoder", "open_clip", SD2_TE_PREFIX)]
    if family == "sdxl_refiner":
        return [("text_encoder_2", "open_clip", REFINER_TE_PREFIX)]
    return [("text_encoder", "clip", SDXL_TE1_PREFIX), ("text_encoder_2", "open_clip", SDXL_TE2_PREFIX)]


def test_unet_round_trips_through_diffusers(components: dict[str, Any], ckpt: StateDict) -> None:
    unet = components["unet"]
    back = convert_ldm_unet_checkpoint(ckpt, unet.config)
    _assert_same(back, unet.state_dict(), "UNet")
    _assert_same(unet_to_ldm(back, unet.config), _subset(ckpt, UNET_PREFIX), "UNet keys in the file")


def test_vae_round_trips_through_diffusers(components: dict[str, Any], ckpt: StateDict) -> None:
    vae = components["vae"]
    back = convert_ldm_vae_checkpoint(ckpt, vae.config)
    _assert_same(back, vae.state_dict(), "VAE")
    _assert_same(vae_to_ldm(back), _subset(ckpt, VAE_PREFIX), "VAE keys in the file")


def test_text_encoders_round_trip_through_diffusers(family: str, components: dict[str, Any], ckpt: StateDict) -> None:
    for name, layout, prefix in _text_encoders(family):
        te = components[name]
        want = _without_text_model(te.state_dict())
        file_keys = _subset(ckpt, prefix)
        if layout == "clip":
            back = convert_ldm_clip_checkpoint(file_keys, remove_prefix=prefix)
            _assert_same(_without_text_model(back), want, name)
            _assert_same(clip_l_to_ldm(back, prefix), file_keys, f"{name} keys in the file")
            continue
        if family.startswith("sd2"):
            # diffusers ignores SD2's last resblock by the hard-coded name "resblocks.23"; the tiny one is
            # number num_hidden_layers, so drop it here (and the unused text_projection, also ignored).
            extra = f"{prefix}transformer.resblocks.{te.config.num_hidden_layers}."
            assert any(k.startswith(extra) for k in file_keys), "SD2 file lacks its extra last resblock"
            file_keys = {k: v for k, v in file_keys.items() if not k.startswith(extra)}
        back = convert_open_clip_checkpoint(te, file_keys, prefix=prefix)
        _assert_same(_without_text_model(back), want, name)
        proj = file_keys.get(prefix + "text_projection")
        again = open_clip_to_ldm(back, prefix, proj=None if proj is None else proj.T)
        _assert_same(again, file_keys, f"{name} keys in the file")


def test_file_holds_nothing_else(family: str, components: dict[str, Any], ckpt: StateDict) -> None:
    prefixes = (UNET_PREFIX, VAE_PREFIX, *(p for _, _, p in _text_encoders(family)))
    others = {k for k in ckpt if not k.startswith(prefixes)}
    expected = set(ldm_schedule_buffers()) if family.startswith(("sd1", "sd2")) else set()
    assert others == expected
    betas = ldm_schedule_buffers()
    for key in expected:
        assert torch.equal(ckpt[key], betas[key])


def test_keys_and_shapes_are_those_of_real_files(family: str, components: dict[str, Any], ckpt: StateDict) -> None:
    in_channels = 9 if family.endswith("_inpaint") else 4
    assert ckpt["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == in_channels
    for key in (
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.block.0.conv1.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.post_quant_conv.weight",
    ):
        assert key in ckpt, key
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ckpt  # highest resolution: no upsample
    assert ckpt["first_stage_model.decoder.mid.attn_1.proj_out.weight"].ndim == 4  # 1x1 conv, as in LDM
    proj_in = ckpt["model.diffusion_model.middle_block.1.proj_in.weight"]
    assert proj_in.ndim == (4 if family.startswith("sd1") else 2)

    if family.startswith("sd1"):
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in ckpt
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in ckpt
    elif family.startswith("sd2"):
        te = components["text_encoder"]
        layers = te.config.num_hidden_layers
        assert "cond_stage_model.model.token_embedding.weight" in ckpt
        assert f"cond_stage_model.model.transformer.resblocks.{layers}.attn.in_proj_weight" in ckpt  # one more
        assert f"cond_stage_model.model.transformer.resblocks.{layers + 1}.ln_1.weight" not in ckpt
        assert ckpt["cond_stage_model.model.text_projection"].shape == (te.config.hidden_size,) * 2
    else:
        assert "model.diffusion_model.label_emb.0.0.weight" in ckpt
        te2 = components["text_encoder_2"]
        prefix = REFINER_TE_PREFIX if family == "sdxl_refiner" else SDXL_TE2_PREFIX
        qkv = ckpt[prefix + "transformer.resblocks.0.attn.in_proj_weight"]
        assert qkv.shape == (3 * te2.config.hidden_size, te2.config.hidden_size)
        assert torch.equal(qkv[: te2.config.hidden_size], te2.text_model.encoder.layers[0].self_attn.q_proj.weight)
        assert torch.equal(ckpt[prefix + "text_projection"], te2.text_projection.weight.T)
        assert prefix + "transformer.resblocks.9.mlp.c_proj.bias" in ckpt  # what diffusers' detector looks for
        if family != "sdxl_refiner":
            assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in ckpt
            assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in ckpt


# What diffusers' own shape-based detector calls each family. Tiny SD2 files read as "v1"/"inpainting": diffusers
# tells SD2 by a 1024-wide cross-attention, so Easel's loader must not rely on it (it passes a config).
DIFFUSERS_MODEL_TYPE = {
    "sd1": "v1",
    "sd1_inpaint": "inpainting",
    "sd2": "v1",
    "sd2_v": "v1",
    "sd2_inpaint": "inpainting",
    "sdxl": "xl_base",
    "sdxl_inpaint": "xl_inpaint",
    "sdxl_refiner": "xl_refiner",
}


def test_diffusers_detector_reading(family: str, ckpt: StateDict) -> None:
    assert infer_diffusers_model_type(ckpt) == DIFFUSERS_MODEL_TYPE[family]


def test_tiny_configs_follow_the_family_rules(family: str, components: dict[str, Any]) -> None:
    unet, vae, scheduler = components["unet"].config, components["vae"].config, components["scheduler"].config
    assert unet.in_channels == (9 if family.endswith("_inpaint") else 4)
    assert vae.scaling_factor == (0.13025 if family.startswith("sdxl") else 0.18215)
    assert 2 ** (len(vae.block_out_channels) - 1) == 8  # latents are 1/8 of the image, as in the real VAEs
    assert scheduler.prediction_type == ("v_prediction" if family == "sd2_v" else "epsilon")
    encoders = [components[name] for name, _, _ in _text_encoders(family)]
    for te in encoders:
        cfg = te.config
        assert cfg.vocab_size == 49408 and cfg.max_position_embeddings == 77
        assert cfg.hidden_size == 64 * cfg.num_attention_heads
    if family.startswith("sd1"):
        assert unet.attention_head_dim == 8 and not unet.use_linear_projection
        assert encoders[0].config.hidden_act == "quick_gelu"
    else:
        assert unet.use_linear_projection
        assert list(unet.attention_head_dim) == [c // 64 for c in unet.block_out_channels]
    if family.startswith("sd2"):
        assert encoders[0].config.hidden_act == "gelu"
    if family.startswith("sdxl"):
        te2 = components["text_encoder_2"].config
        assert te2.hidden_act == "gelu" and te2.num_hidden_layers >= 10
        n_time_ids = 5 if family == "sdxl_refiner" else 6
        assert (
            unet.projection_class_embeddings_input_dim == n_time_ids * unet.addition_time_embed_dim + te2.projection_dim
        )
        if family == "sdxl_refiner":
            assert components["text_encoder"] is None and unet.cross_attention_dim == te2.hidden_size
        else:
            te1 = components["text_encoder"].config
            assert te1.hidden_act == "quick_gelu" and te1.hidden_size != te2.hidden_size
            assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    else:
        assert unet.cross_attention_dim == encoders[0].config.hidden_size


def test_components_are_seeded_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = (build_tiny_components("sd1", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    sd_a, sd_b, sd_c = (pipeline_to_ldm("sd1", x) for x in (a, b, c))
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["model.diffusion_model.out.2.weight"], sd_c["model.diffusion_model.out.2.weight"])
    assert a["tokenizer"] is not b["tokenizer"]  # textual inversion mutates a tokenizer: never share one


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="no original-layout equivalent"):
        vae_to_ldm({"encoder.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no OpenCLIP equivalent"):
        open_clip_to_ldm({"encoder.layers.0.mystery.weight": torch.zeros(1)}, SD2_TE_PREFIX)
    with pytest.raises(ValueError):
        build_tiny_components("sd3")


def test_save_single_file_writes_the_checkpoint_atomically(tmp_path: Path) -> None:
    comps = build_tiny_components("sd2_v")
    path = save_single_file("sd2_v", comps, tmp_path / "models" / "tiny.safetensors")
    assert sorted(os.listdir(path.parent)) == ["tiny.safetensors"]  # no temp file left behind
    _assert_same(load_file(path), pipeline_to_ldm("sd2_v", comps), "saved file")


def test_save_diffusers_folder_loads_back_and_never_overwrites(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    comps = build_tiny_components("sdxl_refiner")
    folder = save_diffusers_folder("sdxl_refiner", comps, tmp_path / "refiner")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.text_encoder is None and pipe.config.requires_aesthetics_score
    _assert_same(pipe.unet.state_dict(), comps["unet"].state_dict(), "reloaded UNet")
    _assert_same(pipe.text_encoder_2.state_dict(), comps["text_encoder_2"].state_dict(), "reloaded text encoder 2")
    with pytest.raises(OSError):
        save_diffusers_folder("sdxl_refiner", comps, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refiner"]


def test_tiny_sd1_pipeline_generates_64px_in_two_steps() -> None:
    pipe = build_pipeline("sd1", build_tiny_components("sd1"))
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        "a red fox",
        negative_prompt="blurry",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(1),
    )
    image = result.images[0]
    assert image.size == (64, 64) and image.mode == "RGB"
