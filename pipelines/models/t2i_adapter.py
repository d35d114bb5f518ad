"""T2I-Adapters (TencentARC), as diffusers' ``T2IAdapter``: diffusers-layout files and folders, and the original
SD1 ``.pth`` layout where it maps one to one.

An adapter is a small convolutional encoder of the control map whose feature maps are added inside the UNet's down
blocks (diffusers' ``down_intrablock_additional_residuals``); it never sees the latents or the step, so its features
are computed once per hint size. Three kinds, told apart by their tensors:

- ``full_adapter`` (SD1): PixelUnshuffle(8), ``conv_in``, one block per UNet level (the first without downsampling);
- ``full_adapter_xl`` (SDXL): PixelUnshuffle(16), the same keys, downsampling only in the third block;
- ``light_adapter`` (SD1, e.g. the colour adapter): no ``conv_in``, blocks of ``in_conv`` / resnets / ``out_conv``.

Full and XL adapters have the same keys; the unshuffle factor (``conv_in``'s input width is the hint's channels
times factor squared) tells them apart, and a diffusers folder's config.json says it outright. Every feature map must
land on one of the UNet's insertion points with the same channels and size, else the adapter is refused naming both
architectures (the UNet itself would skip or crash on a misfit).

The original layout (``conv_in``, ``body.{level * blocks + block}.block1`` ...; light: ``body.{i}.body.{k}``) maps
positionally onto diffusers' names for the released SD1 adapters (``sk=True``, pooling downsamplers); files with
skip convolutions or conv downsamplers have no diffusers counterpart and are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import T2IAdapter

from pipelines.errors import EaselError

PREFIX = "adapter."
ADAPTER_TYPES = ("full_adapter", "full_adapter_xl", "light_adapter")
VAE_SCALE = 8  # image pixels per latent pixel in every SD-family VAE


def is_adapter(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is a T2I-Adapter, in either layout (the style adapter included, to be refused)."""
    if any(k.startswith(PREFIX + "body.") for k in state) or "style_embedding" in state:
        return True
    original_full = "conv_in.weight" in state and "body.0.block1.weight" in state
    return original_full or "body.0.out_conv.weight" in state and "body.0.body.0.block1.weight" in state


def _count(keys: Any, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def original_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TencentARC's original SD1 adapter keys as diffusers' ``T2IAdapter`` keys; EaselError where they do not map."""
    if any(".skep." in k or ".down_opt.op." in k for k in state):
        raise EaselError(
            "this T2I-Adapter's original layout has skip or strided convolutions, which diffusers' T2IAdapter "
            "does not have; use a diffusers-layout copy of it"
        )
    if "style_embedding" in state:
        raise EaselError("this is TencentARC's style adapter (it reads CLIP vision features), which Easel does not run")
    if "body.0.block2.weight" in state and state["body.0.block2.weight"].shape[-1] != 1:
        raise EaselError("this T2I-Adapter's original layout has 3x3 block convolutions, unlike diffusers' T2IAdapter")
    if "body.0.out_conv.weight" in state:  # light: one extractor per level, its resnets under body.{i}.body.{k}
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            m = re.fullmatch(r"body\.(\d+)\.body\.(\d+)\.(block[12]\.(?:weight|bias))", key)
            if m:
                out[f"{PREFIX}body.{m[1]}.resnets.{m[2]}.{m[3]}"] = value
            elif re.fullmatch(r"body\.\d+\.(?:in_conv|out_conv)\.(?:weight|bias)", key):
                out[PREFIX + key] = value
            else:
                raise EaselError(f"unexpected key {key} in an original-layout light T2I-Adapter")
        return out
    blocks = _count(state, r"body\.(\d+)\.")
    per_level = next((k for k in range(1, blocks) if f"body.{k}.in_conv.weight" in state), None)
    if per_level is None or blocks % per_level:
        raise EaselError("the original-layout T2I-Adapter's levels cannot be told apart (no channel change)")
    out = {}
    for key, value in state.items():
        if key.startswith("conv_in."):
            out[PREFIX + key] = value
            continue
        m = re.fullmatch(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)", key)
        if m is None:
            raise EaselError(f"unexpected key {key} in an original-layout T2I-Adapter")
        level, block = divmod(int(m[1]), per_level)
        if m[2] == "in_conv":
            out[f"{PREFIX}body.{level}.in_conv.{m[3]}"] = value
        else:
            out[f"{PREFIX}body.{level}.resnets.{block}.{m[2]}.{m[3]}"] = value
    return out


def adapter_to_original(model: T2IAdapter) -> dict[str, torch.Tensor]:
    """An SD1 adapter's weights in the original layout (the inverse of ``original_to_diffusers``), for tests."""
    config = model.config
    if config.adapter_type == "full_adapter_xl":
        raise ValueError("SDXL adapters have no original layout Easel writes")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name = key.removeprefix(PREFIX)
        if config.adapter_type == "light_adapter":
            name = re.sub(r"^body\.(\d+)\.resnets\.", r"body.\1.body.", name)
        elif m := re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", name):
            name = f"body.{int(m[1]) * config.num_res_blocks + int(m[2])}.{m[3]}"
        elif m := re.fullmatch(r"body\.(\d+)\.in_conv\.(.+)", name):
            name = f"body.{int(m[1]) * config.num_res_blocks}.in_conv.{m[2]}"
        out[name] = value.detach().contiguous()
    return out


def _hint_geometry(width: int, own: Mapping[str, Any]) -> tuple[int, int]:
    """``(hint channels, unshuffle factor)`` from the first layer's input width (``channels * factor**2``)."""
    if own.get("in_channels") and own.get("downscale_factor"):
        return int(own["in_channels"]), int(own["downscale_factor"])
    for channels in (3, 1):
        factor = math.isqrt(width // channels)
        if width % channels == 0 and factor * factor * channels == width and factor in (8, 16):
            return channels, factor
    raise EaselError(f"the T2I-Adapter's first layer takes {width} channels: not an RGB or gray hint Easel knows")


def derive_adapter_config(state: Mapping[str, torch.Tensor], own: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``T2IAdapter`` config of a diffusers-named state dict (a folder's config.json may settle its type)."""
    try:
        return _derive_adapter_config(state, own or {})
    except KeyError as exc:
        raise EaselError(f"the T2I-Adapter has no {exc.args[0]}: a layout Easel does not know") from None


def _derive_adapter_config(state: Mapping[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, Any]:
    blocks = _count(state, r"adapter\.body\.(\d+)\.")
    if not blocks:
        raise EaselError("the T2I-Adapter has no blocks")
    res_blocks = _count(state, r"adapter\.body\.0\.resnets\.(\d+)\.")
    if "adapter.conv_in.weight" in state:
        kind = own.get("adapter_type")
        channels = [int(state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in range(blocks)]
        in_channels, factor = _hint_geometry(int(state["adapter.conv_in.weight"].shape[1]), own)
        kind = kind or ("full_adapter_xl" if factor == 16 else "full_adapter")
    else:
        kind = "light_adapter"
        outs = [int(state[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in range(blocks)]
        channels = outs[:-1]  # diffusers repeats the last level once more, downsampled
        in_channels, factor = _hint_geometry(int(state["adapter.body.0.in_conv.weight"].shape[1]), own)
    if kind not in ADAPTER_TYPES:
        raise EaselError(f"unknown T2I-Adapter type {kind!r} (Easel knows {', '.join(ADAPTER_TYPES)})")
    return {
        "in_channels": in_channels,
        "channels": channels,
        "num_res_blocks": res_blocks,
        "downscale_factor": factor,
        "adapter_type": kind,
    }


def feature_shapes(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``(channels, image pixels per feature pixel)`` of each feature map the adapter puts out, in order."""
    channels, factor, kind = list(config["channels"]), int(config["downscale_factor"]), config["adapter_type"]
    if kind == "light_adapter":
        return [(c, factor * 2**i) for i, c in enumerate([*channels, channels[-1]])]
    if kind == "full_adapter_xl":
        return [(c, factor * (2 if i >= 2 else 1)) for i, c in enumerate(channels)]
    return [(c, factor * 2**i) for i, c in enumerate(channels)]


def insertion_points(unet_config: Mapping[str, Any]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Where diffusers' UNet adds intrablock residuals: ``(channels, scale)`` per down block, and the middle block's.

    A cross-attention block takes its residual before its downsampler; a plain block after its whole block.
    """
    out_channels, types = list(unet_config["block_out_channels"]), list(unet_config["down_block_types"])
    points = []
    for i, (c, kind) in enumerate(zip(out_channels, types, strict=True)):
        final = i == len(types) - 1
        points.append((c, VAE_SCALE * 2 ** (i if "CrossAttn" in kind or final else i + 1)))
    return points, (out_channels[-1], VAE_SCALE * 2 ** (len(types) - 1))


def check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """EaselError (not torch's size-mismatch error) when a tensor's shape differs from the derived model's."""
    for key, expected in model.state_dict().items():
        if key in state and tuple(state[key].shape) != tuple(expected.shape):
            raise EaselError(
                f"the {what} weights do not match the detected architecture ({key}: {tuple(state[key].shape)} "
                f"vs {tuple(expected.shape)})"
            )


def adapter_architecture(config: Mapping[str, Any]) -> str:
    return "SDXL" if config.get("adapter_type") == "full_adapter_xl" else "SD 1.x"


def check_fits(config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> None:
    """EaselError naming both architectures unless each feature map fits a UNet insertion point exactly."""
    from pipelines.models.controlnet import architecture_name

    features = feature_shapes(config)
    points, mid = insertion_points(unet_config)
    wanted = [*points, mid][: max(len(points), min(len(features), len(points) + 1))]
    if features != wanted:
        raise EaselError(
            f"this T2I-Adapter is for {adapter_architecture(config)} but the active checkpoint is "
            f"{architecture_name(unet_config)} (its features (channels, scale) {features} do not fit the UNet's "
            f"{wanted}); pick an adapter made for this checkpoint's architecture"
        )


def build_adapter(
    state: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    dtype: torch.dtype,
    name: str,
    own: Mapping[str, Any] | None = None,
) -> T2IAdapter:
    """A T2I-Adapter from its tensors (either layout), checked to fit the active UNet; nothing downloaded."""
    from pipelines.models.loader import _load_into

    if not any(k.startswith(PREFIX) for k in state):
        state = original_to_diffusers(state)
    config = derive_adapter_config(state, own)
    check_fits(config, unet_config)
    with torch.device("meta"):
        model = T2IAdapter(**config)
    check_shapes(model, state, f"T2I-Adapter {name}")
    _load_into(model, state, dtype, f"T2I-Adapter {name}")
    return model
