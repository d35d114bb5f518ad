"""Which Stable Diffusion family a checkpoint is, and its diffusers configs, read from tensor shapes alone.

Works on a mapping of key -> shape in the original LDM/SGM layout, so a full-size SD1.5 file and a tiny test
checkpoint of the same family go through the same code. The shipped family config (``pipelines/models/configs``)
supplies only what shapes cannot tell: scheduler, prediction type, VAE scaling, activation functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.errors import EaselError
from pipelines.models.ldm_layout import (
    REFINER_TE_PREFIX,
    SD1_TE_PREFIX,
    SD2_TE_PREFIX,
    SDXL_TE1_PREFIX,
    SDXL_TE2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)

CONFIGS_DIR = Path(__file__).parent / "configs"
FAMILIES = ("sd1", "sd1_inpaint", "sd2", "sd2_v", "sd2_inpaint", "sdxl", "sdxl_inpaint", "sdxl_refiner")
FAMILY_LABELS = {
    "sd1": "SD 1.x",
    "sd1_inpaint": "SD 1.x inpainting",
    "sd2": "SD 2.x",
    "sd2_v": "SD 2.x 768-v",
    "sd2_inpaint": "SD 2.x inpainting",
    "sdxl": "SDXL",
    "sdxl_inpaint": "SDXL inpainting",
    "sdxl_refiner": "SDXL refiner",
}

INPAINT_IN_CHANNELS = 9  # an inpainting UNet's input: latents (4) + mask (1) + masked-image latents (4)

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a checkpoint: where its keys live, its layout and its transformers config."""

    prefix: str
    layout: str  # "clip" (HF CLIP keys) or "open_clip" (OpenCLIP resblocks)
    with_projection: bool
    config: dict[str, Any]


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build a checkpoint's diffusers modules."""

    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: dict[str, Any]

    @property
    def is_sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def is_inpaint(self) -> bool:
        return self.unet.get("in_channels") == INPAINT_IN_CHANNELS


@cache
def family_config(family: str, component: str) -> dict[str, Any]:
    """A shipped JSON config of one family (``component`` is a sub-folder, or "" for model_index.json)."""
    folder = CONFIGS_DIR / family
    path = folder / "model_index.json" if not component else folder / component / _config_name(component)
    return json.loads(path.read_text())


def _config_name(component: str) -> str:
    return "scheduler_config.json" if component == "scheduler" else "config.json"


def _count(shapes: Shapes, pattern: str) -> int:
    """How many distinct integers fill ``{}`` in keys matching ``pattern`` (a regex with one group)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def detect_family(shapes: Shapes, sidecar: Mapping[str, Any] | None = None) -> str:
    """Name the family of an original-layout checkpoint, or raise EaselError for an unknown layout.

    SD2 epsilon vs v-prediction cannot be told from shapes; it is "sd2" here unless a sidecar config says
    ``parameterization: v``. The loader refines it with a forward-pass probe when there is no sidecar.
    """
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise EaselError(f"no Stable Diffusion UNet found (no '{UNET_PREFIX}*' keys)")
    in_channels = conv_in[1]
    if in_channels not in (4, INPAINT_IN_CHANNELS):
        raise EaselError(f"UNet with {in_channels} input channels is not a supported Stable Diffusion model")
    inpaint = in_channels == INPAINT_IN_CHANNELS
    if any(k.startswith(SDXL_TE2_PREFIX) for k in shapes):
        return "sdxl_inpaint" if inpaint else "sdxl"
    if any(k.startswith(REFINER_TE_PREFIX) for k in shapes):
        return "sdxl_refiner"
    if any(k.startswith(SD2_TE_PREFIX) for k in shapes):
        if inpaint:
            return "sd2_inpaint"
        v_pred = bool(sidecar and sidecar.get("parameterization") == "v")
        return "sd2_v" if v_pred else "sd2"
    if any(k.startswith(SD1_TE_PREFIX) for k in shapes):
        return "sd1_inpaint" if inpaint else "sd1"
    raise EaselError("a UNet was found but no text encoder of a known layout (SD 1.x, SD 2.x or SDXL)")


def derive_unet_config(shapes: Shapes, family: str) -> dict[str, Any]:
    """UNet2DConditionModel config: structure from shapes, head rule and embedding type from the family."""
    cfg = dict(family_config(family, "unet"))
    conv_in = shapes[UNET_PREFIX + "input_blocks.0.0.weight"]
    levels: list[dict[str, Any]] = []
    level: dict[str, Any] = {"channels": [], "depth": 0}
    i = 1
    while any(k.startswith(f"{UNET_PREFIX}input_blocks.{i}.") for k in shapes):
        prefix = f"{UNET_PREFIX}input_blocks.{i}."
        if prefix + "0.op.weight" in shapes:  # downsample closes a level
            levels.append(level)
            level = {"channels": [], "depth": 0}
        else:
            level["channels"].append(shapes[prefix + "0.out_layers.3.weight"][0])
            depth = _count(shapes, re.escape(prefix) + r"1\.transformer_blocks\.(\d+)\.")
            level["depth"] = max(level["depth"], depth)
        i += 1
    levels.append(level)
    if not levels[0]["channels"]:
        raise EaselError("the UNet's input blocks have an unexpected layout")

    channels = [lv["channels"][-1] for lv in levels]
    attention = [lv["depth"] > 0 for lv in levels]
    cfg["in_channels"] = conv_in[1]
    cfg["out_channels"] = shapes[UNET_PREFIX + "out.2.weight"][0]
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = len(levels[0]["channels"])
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    cfg["transformer_layers_per_block"] = [max(1, lv["depth"]) for lv in levels]
    mid_depth = _count(shapes, re.escape(UNET_PREFIX) + r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if not mid_depth or mid_depth != cfg["transformer_layers_per_block"][-1]:
        raise EaselError("the UNet's middle block depth differs from its last level's; layout not supported")

    proj_in = next((v for k, v in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith("1.proj_in.weight")), None)
    to_k = next((v for k, v in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if proj_in is None or to_k is None:
        raise EaselError("the UNet has no cross-attention layers")
    cfg["use_linear_projection"] = len(proj_in) == 2
    cfg["cross_attention_dim"] = to_k[1]
    if family.startswith("sd1"):
        cfg["attention_head_dim"] = 8  # SD1.x: 8 heads in every attention layer (diffusers' historic name)
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]  # 64 channels a head
    time_embed = shapes[UNET_PREFIX + "time_embed.0.weight"]
    cfg["time_embedding_dim"] = None if time_embed[0] == channels[0] * 4 else time_embed[0]

    label = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is not None:
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = label[1]
        te2 = shapes.get(_te2_prefix(family) + "text_projection")
        pooled_dim = te2[1] if te2 else cfg["cross_attention_dim"]
        n_time_ids = 5 if family == "sdxl_refiner" else 6
        cfg["addition_time_embed_dim"] = (label[1] - pooled_dim) // n_time_ids
    else:
        for key in ("addition_embed_type", "projection_class_embeddings_input_dim", "addition_time_embed_dim"):
            cfg[key] = None
    return cfg


def _te2_prefix(family: str) -> str:
    return REFINER_TE_PREFIX if family == "sdxl_refiner" else SDXL_TE2_PREFIX


def derive_vae_config(shapes: Shapes, family: str) -> dict[str, Any]:
    """AutoencoderKL config from encoder/decoder shapes; scaling factor and upcast rule from the family."""
    cfg = dict(family_config(family, "vae"))
    if VAE_PREFIX + "encoder.conv_in.weight" not in shapes:
        raise EaselError(f"no VAE found (no '{VAE_PREFIX}*' keys)")
    n_levels = _count(shapes, re.escape(VAE_PREFIX) + r"encoder\.down\.(\d+)\.")
    channels = [shapes[f"{VAE_PREFIX}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n_levels)]
    cfg["in_channels"] = shapes[VAE_PREFIX + "encoder.conv_in.weight"][1]
    cfg["out_channels"] = shapes[VAE_PREFIX + "decoder.conv_out.weight"][0]
    cfg["latent_channels"] = shapes[VAE_PREFIX + "decoder.conv_in.weight"][1]
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = _count(shapes, re.escape(VAE_PREFIX) + r"encoder\.down\.0\.block\.(\d+)\.")
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * n_levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * n_levels
    return cfg


def _clip_spec(shapes: Shapes, prefix: str, family: str, component: str, projection: bool) -> TextEncoderSpec:
    """A HF-CLIP-layout text encoder (SD1's and SDXL's first); keys may or may not carry ``text_model.``."""
    if any(k.startswith(prefix + "text_model.") for k in shapes):
        prefix += "text_model."
    token = shapes[prefix + "embeddings.token_embedding.weight"]
    layers = _count(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    cfg = dict(family_config(family, component))
    cfg.update(
        vocab_size=token[0],
        hidden_size=token[1],
        num_hidden_layers=layers,
        num_attention_heads=max(1, token[1] // 64),
        intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
        max_position_embeddings=shapes[prefix + "embeddings.position_embedding.weight"][0],
    )
    if projection and prefix + "text_projection.weight" in shapes:
        cfg["projection_dim"] = shapes[prefix + "text_projection.weight"][0]
    return TextEncoderSpec(prefix=prefix, layout="clip", with_projection=projection, config=cfg)


def _open_clip_spec(shapes: Shapes, prefix: str, family: str, component: str, drop_last: bool) -> TextEncoderSpec:
    """An OpenCLIP text encoder. SD2 uses the penultimate layer, so diffusers' model drops the last one."""
    token = shapes[prefix + "token_embedding.weight"]
    layers = _count(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    proj = shapes.get(prefix + "text_projection")
    cfg = dict(family_config(family, component))
    cfg.update(
        vocab_size=token[0],
        hidden_size=token[1],
        num_hidden_layers=layers - 1 if drop_last else layers,
        num_attention_heads=max(1, token[1] // 64),
        intermediate_size=shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0],
        max_position_embeddings=shapes[prefix + "positional_embedding"][0],
    )
    if proj is not None:
        cfg["projection_dim"] = proj[1]
    return TextEncoderSpec(prefix=prefix, layout="open_clip", with_projection=not drop_last, config=cfg)


def derive_architecture(shapes: Shapes, sidecar: Mapping[str, Any] | None = None) -> Architecture:
    """Detect the family and derive every component's config from an original-layout checkpoint's shapes."""
    family = detect_family(shapes, sidecar)
    if family.startswith("sd1"):
        encoders: tuple[TextEncoderSpec, ...] = (_clip_spec(shapes, SD1_TE_PREFIX, family, "text_encoder", False),)
    elif family.startswith("sd2"):
        encoders = (_open_clip_spec(shapes, SD2_TE_PREFIX, family, "text_encoder", drop_last=True),)
    elif family == "sdxl_refiner":
        encoders = (_open_clip_spec(shapes, REFINER_TE_PREFIX, family, "text_encoder_2", drop_last=False),)
    else:
        encoders = (
            _clip_spec(shapes, SDXL_TE1_PREFIX, family, "text_encoder", False),
            _open_clip_spec(shapes, SDXL_TE2_PREFIX, family, "text_encoder_2", drop_last=False),
        )
    return Architecture(
        family=family,
        unet=derive_unet_config(shapes, family),
        vae=derive_vae_config(shapes, family),
        text_encoders=encoders,
        scheduler=dict(family_config(family, "scheduler")),
    )


def parse_sidecar_yaml(text: str) -> dict[str, Any]:
    """The two facts Easel reads from an A1111-style sidecar LDM ``.yaml``: parameterization and in_channels.

    A regex is enough for these scalar keys and avoids executing arbitrary YAML tags.
    """
    found: dict[str, Any] = {}
    if m := re.search(r"^\s*parameterization:\s*['\"]?(\w+)", text, re.MULTILINE):
        found["parameterization"] = m.group(1)
    if m := re.search(r"^\s*in_channels:\s*(\d+)", text, re.MULTILINE):
        found["in_channels"] = int(m.group(1))
    return found
