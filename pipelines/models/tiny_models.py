"""Tiny random-weight Stable Diffusion models of every family, for tests and the offline demo.

They follow the structural rules of the real families (DESIGN.md section 3), so the loader that opens a real
checkpoint opens these through the same code: SD1.x UNets have 8 heads per attention layer and 1x1-conv
proj_in/proj_out; SD2.x/SDXL UNets use 64 channels a head and linear projections; every text encoder uses
64 channels a head, the real 49408-token vocabulary and 77 positions; SD1.x's CLIP uses quick_gelu, the
OpenCLIP ones gelu. The VAE downsamples by 8 like the real one, so a 64x64 image is an 8x8 latent.
SDXL's two text encoders have different widths and the second has 10 layers, which diffusers' own
detector needs to call a file SDXL.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines.models.architecture import INPAINT_IN_CHANNELS
from pipelines.models.ldm_layout import pipeline_to_ldm
from pipelines.models.tokenizers import OPENCLIP_PAD_TOKEN, load_clip_tokenizer

TINY_FAMILIES: tuple[str, ...] = (
    "sd1",
    "sd1_inpaint",
    "sd2",
    "sd2_v",
    "sd2_inpaint",
    "sdxl",
    "sdxl_inpaint",
    "sdxl_refiner",
)

VOCAB_SIZE = 49408
MAX_POSITIONS = 77
ADD_TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim (256 in the real model)
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

CLIP_PAD_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class TextEncoderShape:
    """Size of a tiny text encoder; 64 channels a head like every real one."""

    hidden: int
    intermediate: int
    layers: int
    act: str


CLIP_L = TextEncoderShape(hidden=64, intermediate=256, layers=4, act="quick_gelu")  # SD1.x (real: 768, 12 layers)
OPEN_CLIP_H = TextEncoderShape(hidden=64, intermediate=256, layers=3, act="gelu")  # SD2.x (real: 1024, 23 (+1))
SDXL_CLIP_L = TextEncoderShape(hidden=64, intermediate=256, layers=3, act="quick_gelu")  # SDXL 1st (real: 768, 12)
# SDXL's 2nd / the refiner's only encoder (real: bigG 1280, 32 layers). Wider than the 1st, so diffusers' loader
# cannot mix them up, and 10 layers, the least diffusers' detector accepts as SDXL.
OPEN_CLIP_BIGG = TextEncoderShape(hidden=128, intermediate=256, layers=10, act="gelu")

_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "sd1": StableDiffusionPipeline,
    "sd1_inpaint": StableDiffusionInpaintPipeline,
    "sd2": StableDiffusionPipeline,
    "sd2_v": StableDiffusionPipeline,
    "sd2_inpaint": StableDiffusionInpaintPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sdxl_inpaint": StableDiffusionXLInpaintPipeline,
    "sdxl_refiner": StableDiffusionXLImg2ImgPipeline,
}


def _check_family(family: str) -> None:
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(TINY_FAMILIES)}")


def _text_config(shape: TextEncoderShape, pad_token_id: int) -> CLIPTextConfig:
    """A CLIP text config with 64 channels a head and the real vocabulary and context length."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.hidden // 64,
        max_position_embeddings=MAX_POSITIONS,
        hidden_act=shape.act,
        layer_norm_eps=1e-5,
        projection_dim=shape.hidden,  # OpenCLIP bigG: projection as wide as the encoder
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )


def _text_encoder(
    shape: TextEncoderShape, pad_token: str, with_projection: bool = False
) -> tuple[CLIPTextModel | CLIPTextModelWithProjection, Any]:
    """A random text encoder (seeded by the caller) and its own copy of the shipped tokenizer."""
    tokenizer = _tokenizer(pad_token)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(_text_config(shape, tokenizer.pad_token_id)), tokenizer


def tiny_unet_config(family: str) -> dict[str, Any]:
    """The tiny UNet2DConditionModel config of a family (its structure mirrors the real one's)."""
    _check_family(family)
    in_channels = INPAINT_IN_CHANNELS if family.endswith("_inpaint") else 4
    common: dict[str, Any] = {
        "sample_size": 8,  # 8x8 latent = 64x64 image, the pipelines' default size
        "in_channels": in_channels,
        "out_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
    }
    if family.startswith("sd1"):
        return common | {
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 8,  # SD1.x: 8 heads in every attention layer
            "cross_attention_dim": CLIP_L.hidden,
            "use_linear_projection": False,
        }
    if family.startswith("sd2"):
        return common | {
            "block_out_channels": (64, 128),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": (1, 2),  # 64 channels a head
            "cross_attention_dim": OPEN_CLIP_H.hidden,
            "use_linear_projection": True,
            "upcast_attention": family == "sd2_v",  # as stable-diffusion-2-1 (768-v) ships
        }
    refiner = family == "sdxl_refiner"
    te2_hidden = OPEN_CLIP_BIGG.hidden
    return common | {
        "block_out_channels": (64, 128),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (1, 2),
        "transformer_layers_per_block": (1, 2),
        "cross_attention_dim": te2_hidden if refiner else SDXL_CLIP_L.hidden + te2_hidden,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": ADD_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": (5 if refiner else 6) * ADD_TIME_EMBED_DIM + te2_hidden,
    }


def tiny_vae_config(family: str) -> dict[str, Any]:
    """The tiny AutoencoderKL config: 4 levels (downsampling by 8) of 32-64 channels."""
    _check_family(family)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": 0.13025 if family.startswith("sdxl") else 0.18215,
    }


def tiny_scheduler(family: str) -> PNDMScheduler | DDIMScheduler | EulerDiscreteScheduler:
    """The scheduler the family's real diffusers folder ships (sd2_v: v-prediction)."""
    _check_family(family)
    if family.startswith("sdxl"):
        return EulerDiscreteScheduler(
            **SD_BETAS,
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            prediction_type="epsilon",
        )
    if family == "sd2_v":
        return DDIMScheduler(
            **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"
        )
    return PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


def build_tiny_components(family: str, seed: int = 0) -> dict[str, Any]:
    """Seeded fp32 random-weight diffusers modules of one family, ready for its pipeline class.

    Keys: ``unet``, ``vae``, ``scheduler``, ``text_encoder``/``tokenizer`` and, for SDXL, ``text_encoder_2``/
    ``tokenizer_2`` (the refiner has only the second pair; the first is None). The global torch RNG is left as
    it was. Each call returns fresh modules and tokenizers, so nothing is shared between pipelines.
    """
    _check_family(family)
    components: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel(**tiny_unet_config(family))
        torch.manual_seed(seed + 1)
        components["vae"] = AutoencoderKL(**tiny_vae_config(family))
        torch.manual_seed(seed + 2)
        if family.startswith("sd1"):
            components["text_encoder"], components["tokenizer"] = _text_encoder(CLIP_L, CLIP_PAD_TOKEN)
        elif family.startswith("sd2"):
            # diffusers' SD2 text encoder omits OpenCLIP's last layer; the single file gets one more
            components["text_encoder"], components["tokenizer"] = _text_encoder(OPEN_CLIP_H, OPENCLIP_PAD_TOKEN)
        elif family == "sdxl_refiner":
            components["text_encoder"], components["tokenizer"] = None, None
        else:
            components["text_encoder"], components["tokenizer"] = _text_encoder(SDXL_CLIP_L, CLIP_PAD_TOKEN)
        if family.startswith("sdxl"):
            torch.manual_seed(seed + 3)
            components["text_encoder_2"], components["tokenizer_2"] = _text_encoder(
                OPEN_CLIP_BIGG, OPENCLIP_PAD_TOKEN, with_projection=True
            )
    components["scheduler"] = tiny_scheduler(family)
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return components


def _tokenizer(pad_token: str = CLIP_PAD_TOKEN) -> Any:
    """A private copy of the shipped CLIP tokenizer: textual inversion adds tokens to the one it is given."""
    return copy.deepcopy(load_clip_tokenizer(pad_token=pad_token))


def build_pipeline(family: str, components: Mapping[str, Any]) -> DiffusionPipeline:
    """The family's diffusers pipeline over ``components`` (no safety checker, no watermarker)."""
    _check_family(family)
    cls = _PIPELINE_CLASSES[family]
    kwargs: dict[str, Any] = {k: components.get(k) for k in ("unet", "vae", "scheduler", "text_encoder", "tokenizer")}
    if family.startswith("sdxl"):
        kwargs["text_encoder_2"] = components["text_encoder_2"]
        kwargs["tokenizer_2"] = components["tokenizer_2"]
        kwargs["add_watermarker"] = False
        if family == "sdxl_refiner":
            kwargs.update(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**kwargs)


def save_single_file(family: str, components: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``components`` as one original-layout ``.safetensors`` checkpoint, atomically (temp + replace)."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in pipeline_to_ldm(family, components).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_diffusers_folder(family: str, components: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Write ``components`` as a diffusers folder (safetensors weights), built aside and renamed into place.

    Refuses to replace a non-empty folder (``OSError``), so a user's model is never overwritten.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        build_pipeline(family, components).save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def build_tiny_controlnet(unet: Any, seed: int = 0, scale: float = 0.5) -> Any:
    """A random-weight ControlNet matching ``unet`` (diffusers' ``from_unet``), its zero-initialised convs made random.

    A fresh ControlNet's zero convolutions add nothing; random ones make its residuals (and their weight, modes and
    schedule) visible in the image, which is what tests of ControlNet need.
    """
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):  # the hint encoder's default init: the same model for the same seed
        torch.manual_seed(seed)
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            block.weight.normal_(0, scale, generator=generator)
            block.bias.normal_(0, scale * 0.1, generator=generator)
        # the hint encoder: its last conv starts at zero (the hint would not matter), and with default init its
        # signal fades layer by layer; He-initialised (variance-preserving through SiLU), the hint shows
        embedding = model.controlnet_cond_embedding
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0, (2.0 / fan_in) ** 0.5, generator=generator)
            conv.bias.zero_()
    return model.eval()


def save_controlnet_file(model: Any, path: str | os.PathLike[str], layout: str = "ldm") -> Path:
    """Write a ControlNet as one ``.safetensors`` file, ``ldm`` (``control_model.*``) or ``diffusers`` keys."""
    from pipelines.models.controlnet import controlnet_to_ldm

    path = Path(path)
    if layout == "ldm":
        state = controlnet_to_ldm(model)
    elif layout == "diffusers":
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    else:
        raise ValueError(f"unknown ControlNet layout {layout!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
