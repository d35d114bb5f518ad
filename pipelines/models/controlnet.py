"""ControlNet files, offline: the original layout (lllyasviel's ``control_model.*``) and diffusers' layout.

A ControlNet is built from its tensors' shapes alone, as checkpoints are (``architecture.derive_unet_config``): the
original layout is renamed by diffusers' own converter (``convert_controlnet_checkpoint``, which needs only
``layers_per_block``), then the structure is read off the diffusers-named shapes. The active checkpoint's UNet
supplies what shapes cannot say (attention head counts, SDXL's time-id width) and must agree with the rest: a
ControlNet for another architecture is refused with both named. ``controlnet_to_ldm`` is the inverse renaming, for
writing tiny test files in the original layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from pipelines.errors import EaselError
from pipelines.models.ldm_layout import UNET_PREFIX, unet_to_ldm
from pipelines.models.loader import _load_into, load_state_dict

LDM_PREFIX = "control_model."
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_LABEL_EMB = {"label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}
_HINT_LAST = 14  # ``input_hint_block.14``: the hint encoder's last conv in every original-layout file

# The config keys a ControlNet shares with the UNet it was trained beside (diffusers' ``ControlNetModel.from_unet``).
_FROM_UNET = (
    "attention_head_dim",
    "num_attention_heads",
    "flip_sin_to_cos",
    "freq_shift",
    "only_cross_attention",
    "upcast_attention",
    "resnet_time_scale_shift",
    "norm_num_groups",
    "norm_eps",
    "class_embed_type",
    "num_class_embeds",
    "addition_time_embed_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "mid_block_type",
)
# What must be equal for the residuals to fit the UNet's skip connections (and the conditioning to fit it).
_MUST_MATCH = (
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "cross_attention_dim",
    "projection_class_embeddings_input_dim",
)


def architecture_name(config: Mapping[str, Any]) -> str:
    """A user's name for the architecture a (UNet or ControlNet) config belongs to, from its cross-attention."""
    dim = config.get("cross_attention_dim")
    if config.get("addition_embed_type") == "text_time":
        return "SDXL" if dim == 2048 else f"SDXL-like (cross-attention {dim})"
    return {768: "SD 1.x", 1024: "SD 2.x"}.get(dim, f"SD-like (cross-attention {dim})")  # type: ignore[arg-type]


def _ldm_layers_per_block(state: Mapping[str, torch.Tensor]) -> int:
    for i in range(1, 64):
        if f"input_blocks.{i}.0.op.weight" in state:
            return i - 1
    raise EaselError("the ControlNet's input blocks have no downsampler: not a ControlNet layout Easel knows")


def to_diffusers_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ControlNet state dict in diffusers' names, whichever layout it came in; EaselError for anything else."""
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return dict(state)
    inner = {k[len(LDM_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    if not inner and "input_hint_block.0.weight" in state:  # some files drop the prefix
        inner = dict(state)
    if "input_hint_block.0.weight" not in inner or "zero_convs.0.0.weight" not in inner:
        raise EaselError("no ControlNet found (no control_model.input_hint_block / zero_convs keys)")
    if f"input_hint_block.{_HINT_LAST}.weight" not in inner:
        raise EaselError("the ControlNet's hint encoder has an unexpected layout (no input_hint_block.14)")
    converted = convert_controlnet_checkpoint(inner, {"layers_per_block": _ldm_layers_per_block(inner)})
    for ldm, diffusers in _LABEL_EMB.items():  # SDXL's: the converter's key table has no entry for them
        for param in ("weight", "bias"):
            if f"{ldm}.{param}" in inner:
                converted[f"{diffusers}.{param}"] = inner[f"{ldm}.{param}"]
    return {k: v for k, v in converted.items() if v is not None}


def _count(keys: Any, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def derive_config(state: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ControlNetModel config of a diffusers-named state dict, checked against the active UNet's config."""
    keys = list(state)
    levels = _count(keys, r"down_blocks\.(\d+)\.")
    if not levels or "conv_in.weight" not in state:
        raise EaselError("the ControlNet has no down blocks")
    channels = [int(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)]
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(levels)]
    depth = [
        max(1, _count(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for i in range(levels)
    ]
    to_k = next((v for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in state.items() if k.endswith("proj_in.weight")), None)
    if to_k is None or proj_in is None:
        raise EaselError("the ControlNet has no cross-attention layers")
    hint_blocks = _count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    embedding = [int(state["controlnet_cond_embedding.conv_in.weight"].shape[0])] + [
        int(state[f"controlnet_cond_embedding.blocks.{j}.weight"].shape[0]) for j in range(1, hint_blocks, 2)
    ]
    add = state.get("add_embedding.linear_1.weight")
    config: dict[str, Any] = {k: unet_config[k] for k in _FROM_UNET if k in unet_config}
    config.update(
        in_channels=int(state["conv_in.weight"].shape[1]),
        conditioning_channels=int(state["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        block_out_channels=channels,
        layers_per_block=_count(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        transformer_layers_per_block=depth,
        cross_attention_dim=int(to_k.shape[1]),
        use_linear_projection=proj_in.dim() == 2,
        conditioning_embedding_out_channels=embedding,
        addition_embed_type="text_time" if add is not None else None,
        projection_class_embeddings_input_dim=int(add.shape[1]) if add is not None else None,
    )
    if add is None:
        config["addition_time_embed_dim"] = None
    check_matches(config, unet_config)
    return config


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def check_matches(config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> None:
    """EaselError naming both architectures unless a (loaded) model's config fits the active UNet's."""
    if "adapter_type" in config:  # a T2I-Adapter: its features must land on the UNet's insertion points
        from pipelines.models.t2i_adapter import check_fits

        check_fits(config, unet_config)
        return
    unet = dict(unet_config)
    depth = unet.get("transformer_layers_per_block", 1)
    if isinstance(depth, int):
        unet["transformer_layers_per_block"] = [depth] * len(unet["block_out_channels"])
    unet["transformer_layers_per_block"] = [
        d if "CrossAttn" in t else 1
        for d, t in zip(unet["transformer_layers_per_block"], unet["down_block_types"], strict=True)
    ]
    for key in _MUST_MATCH:
        if _normalised(config.get(key)) != _normalised(unet.get(key)):
            raise EaselError(
                f"this ControlNet is for {architecture_name(config)} but the active checkpoint is "
                f"{architecture_name(unet)} ({key}: {_normalised(config.get(key))} vs {_normalised(unet.get(key))}); "
                "pick a ControlNet made for this checkpoint's architecture"
            )


_CLASSES = (None, "ControlNetModel", "ControlNetUnionModel", "T2IAdapter")


def load_controlnet(
    path: Path, unet_config: Mapping[str, Any], dtype: torch.dtype = torch.float32, allow_pickle: bool = False
) -> Any:
    """A ControlNet, ControlNet-Union or T2I-Adapter file (any layout) or diffusers folder, for a UNet of
    ``unet_config``; the kind is told by the tensors, nothing downloaded."""
    own: dict[str, Any] | None = None
    if path.is_dir():
        weights = next((path / n for n in ("diffusion_pytorch_model.safetensors",) if (path / n).is_file()), None)
        if weights is None:
            raise EaselError(f"{path.name}/: no diffusion_pytorch_model.safetensors in this diffusers folder")
        state = load_state_dict(weights, allow_pickle)
        if (path / "config.json").is_file():  # the folder's own config, still checked against the UNet
            try:
                own = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise EaselError(f"{path.name}/config.json is not readable JSON ({exc})") from None
            if not isinstance(own, dict) or own.get("_class_name") not in _CLASSES:
                what = own.get("_class_name") if isinstance(own, dict) else "config"
                raise EaselError(f"{path.name}/ holds a {what}, not a ControlNet or T2I-Adapter")
    else:
        state = load_state_dict(path, allow_pickle)
    from pipelines.models import controlnet_union, t2i_adapter

    if t2i_adapter.is_adapter(state):
        return t2i_adapter.build_adapter(state, unet_config, dtype, path.name, own)
    state = to_diffusers_layout(state)
    if controlnet_union.is_union(state):
        config = controlnet_union.derive_union_config(state, unet_config, own)
        model = controlnet_union.build_union(config)
        t2i_adapter.check_shapes(model, state, f"ControlNet-Union {path.name}")
        _load_into(model, state, dtype, f"ControlNet-Union {path.name}")
        return model
    config = derive_config(state, unet_config)
    with torch.device("meta"):
        model = ControlNetModel(**config)
    _load_into(model, state, dtype, f"ControlNet {path.name}")
    return model


def controlnet_to_ldm(model: ControlNetModel) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's weights in the original ``control_model.*`` layout (the inverse of the converter)."""
    state = model.state_dict()
    unet_part = {
        k: v
        for k, v in state.items()
        if not k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding."))
    }
    config = {"layers_per_block": model.config.layers_per_block, "up_block_types": []}
    out = {LDM_PREFIX + k[len(UNET_PREFIX) :]: v for k, v in unet_to_ldm(unet_part, config).items()}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
            out[f"{LDM_PREFIX}zero_convs.{m[1]}.0.{param}"] = value
        elif module == "controlnet_mid_block":
            out[f"{LDM_PREFIX}middle_block_out.0.{param}"] = value
        elif module == "controlnet_cond_embedding.conv_in":
            out[f"{LDM_PREFIX}input_hint_block.0.{param}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
            out[f"{LDM_PREFIX}input_hint_block.{2 * (int(m[1]) + 1)}.{param}"] = value
        elif module == "controlnet_cond_embedding.conv_out":
            out[f"{LDM_PREFIX}input_hint_block.{_HINT_LAST}.{param}"] = value
    return {k: v.contiguous() for k, v in out.items()}
