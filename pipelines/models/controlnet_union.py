"""ControlNet-Union (xinsir's controlnet-union-sdxl-1.0 and its "promax"), as diffusers' ``ControlNetUnionModel``.

One SDXL ControlNet for many kinds of control map: besides a plain ControlNet's layers it has a learned embedding per
control type (``task_embedding``), a small transformer over the hint's pooled features (``transformer_layes``, the
attribute is spelled so in diffusers), a projection back to the first block (``spatial_ch_projs``) and a timestep
embedding of the one-hot control type (``control_add_embedding``). The files are diffusers-layout; everything but
the transformer's head count (not visible in any shape: 8 in every released model, or the folder's config.json) is
read off the tensors, and the UNet part is derived and checked against the active checkpoint exactly as a plain
ControlNet's.

Control types by index, as the model was trained (xinsir's model card; sd-webui-controlnet's names in brackets):
0 openpose (OpenPose), 1 depth (Depth), 2 hed/pidi/scribble/ted (Soft Edge), 3 canny/lineart/anime_lineart/mlsd
(Canny), 4 normal (Normal Map), 5 segment (Segmentation), and in promax 6 tile (Tile), 7 repaint (Inpaint).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import ControlNetUnionModel

from pipelines.errors import EaselError

# (sd-webui-controlnet's name, xinsir's name) by index
UNION_CONTROL_TYPES: tuple[tuple[str, str], ...] = (
    ("OpenPose", "openpose"),
    ("Depth", "depth"),
    ("Soft Edge", "hed/pidi/scribble/ted"),
    ("Canny", "canny/lineart/anime_lineart/mlsd"),
    ("Normal Map", "normal"),
    ("Segmentation", "segment"),
    ("Tile", "tile"),
    ("Inpaint", "repaint"),
)
DEFAULT_TRANSFORMER_HEADS = 8  # diffusers' default and every released union model's


def is_union(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a diffusers-named ControlNet state dict is a union model (it has the control-type layers)."""
    return "task_embedding" in state or "control_add_embedding.linear_1.weight" in state


def derive_union_config(
    state: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], own: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``ControlNetUnionModel`` config of ``state``, its UNet part checked against the active checkpoint."""
    from pipelines.models.controlnet import derive_config

    for key in ("task_embedding", "control_add_embedding.linear_1.weight", "spatial_ch_projs.weight"):
        if key not in state:
            raise EaselError(f"the ControlNet-Union file has no {key}: a union layout Easel does not know")
    config = derive_config(state, unet_config)  # the UNet-like part: raises naming both architectures
    task = state["task_embedding"]
    types, trans_channels = int(task.shape[0]), int(task.shape[1])
    control_in = int(state["control_add_embedding.linear_1.weight"].shape[1])
    if control_in % types:
        raise EaselError(f"the ControlNet-Union's control embedding ({control_in}) does not fit {types} control types")
    layers = len({m[1] for k in state if (m := re.match(r"transformer_layes\.(\d+)\.", k))})
    heads = int((own or {}).get("num_trans_head") or DEFAULT_TRANSFORMER_HEADS)
    if trans_channels % heads:
        raise EaselError(f"the ControlNet-Union's transformer width {trans_channels} is not divisible by {heads} heads")
    config.update(
        num_control_type=types,
        num_trans_channel=trans_channels,
        num_trans_head=heads,
        num_trans_layer=layers,
        num_proj_channel=int(state["spatial_ch_projs.weight"].shape[0]),
        addition_time_embed_dim=control_in // types,
    )
    return config


def build_union(config: Mapping[str, Any]) -> ControlNetUnionModel:
    """An empty (meta) model; keys of a plain ControlNet's config the union class does not take are dropped (its
    middle block is always the cross-attention one, which every SDXL UNet has)."""
    accepted = inspect.signature(ControlNetUnionModel.__init__).parameters
    with torch.device("meta"):
        return ControlNetUnionModel(**{k: v for k, v in config.items() if k in accepted})


def control_type_index(name: str | int, available: int) -> int:
    """A control type's index by sd-webui-controlnet's name, xinsir's name or number; EaselError listing them."""
    names = ", ".join(n for n, _ in UNION_CONTROL_TYPES[:available])
    if isinstance(name, int) and not isinstance(name, bool):
        index = name
    else:
        text = str(name).strip().lower()
        index = next(
            (i for i, (ours, theirs) in enumerate(UNION_CONTROL_TYPES) if text in (ours.lower(), theirs.lower())), -1
        )
        if index < 0 and text.isdigit():
            index = int(text)
        if index < 0:
            raise EaselError(f"unknown ControlNet-Union control type '{name}' (one of: {names})")
    if not 0 <= index < available:
        which = UNION_CONTROL_TYPES[index][0] if 0 <= index < len(UNION_CONTROL_TYPES) else str(name)
        raise EaselError(
            f"this ControlNet-Union model knows {available} control types ({names}); {which} needs another model "
            "(tile and inpaint are in the promax version)"
        )
    return index


def union_inputs(model: ControlNetUnionModel, index: int, cond: torch.Tensor) -> dict[str, Any]:
    """``ControlNetUnionModel.forward``'s control arguments for one control map ``cond`` of type ``index``."""
    one_hot = torch.zeros(cond.shape[0], model.config.num_control_type, device=cond.device, dtype=cond.dtype)
    one_hot[:, index] = 1
    return {"controlnet_cond": [cond], "control_type": one_hot, "control_type_idx": [index]}
