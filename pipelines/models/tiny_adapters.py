"""Tiny random-weight ControlNet-Union models and T2I-Adapters for tests, written as real files in released layouts.

As ``tiny_models.build_tiny_controlnet``: layers that start at zero in a fresh model (and so would add nothing) are
made random, so that weight, control type and schedule show in the image.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pipelines.models.tiny_models import build_tiny_controlnet


def _he_init(convs: Any, generator: torch.Generator) -> None:
    for conv in convs:
        fan_in = conv.weight[0].numel()
        conv.weight.normal_(0, (2.0 / fan_in) ** 0.5, generator=generator)
        conv.bias.zero_()


def build_tiny_union(unet: Any, seed: int = 0, scale: float = 0.5, control_types: int = 8) -> Any:
    """A random-weight ``ControlNetUnionModel`` for an SDXL-like ``unet`` ("promax": 8 control types by default)."""
    from diffusers import ControlNetUnionModel

    plain = build_tiny_controlnet(unet, seed=seed, scale=scale)  # the UNet-like part, its zero convs made random
    accepted = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    config = {k: v for k, v in plain.config.items() if k in accepted}
    width = int(unet.config.block_out_channels[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetUnionModel(
            **config, num_control_type=control_types, num_trans_channel=width, num_proj_channel=width
        )
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected, unexpected
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.spatial_ch_projs.weight.normal_(0, scale / width**0.5, generator=generator)
        model.spatial_ch_projs.bias.normal_(0, scale, generator=generator)
    return model.eval()


def build_tiny_t2i_adapter(unet: Any, seed: int = 0, in_channels: int = 3, scale: float = 1.0) -> Any:
    """A random-weight ``T2IAdapter`` whose features fit ``unet``: ``full_adapter_xl`` for SDXL-like UNets (their
    first block a plain one), else ``full_adapter``; one feature map per UNet level."""
    from diffusers import T2IAdapter

    xl = unet.config.get("addition_embed_type") == "text_time"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T2IAdapter(
            in_channels=in_channels,
            channels=list(unet.config.block_out_channels),
            num_res_blocks=2,
            downscale_factor=16 if xl else 8,
            adapter_type="full_adapter_xl" if xl else "full_adapter",
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        _he_init(convs, generator)
        for conv in convs:
            conv.weight.mul_(scale)
    return model.eval()


def save_tensors(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """``state`` as one file, atomically: ``.safetensors``, or a plain-tensor pickle (``.pth``) for pickle tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    try:
        if path.suffix == ".safetensors":
            save_file(state, tmp, metadata={"format": "pt"})
        else:
            torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_adapter_file(model: Any, path: str | os.PathLike[str], layout: str = "diffusers") -> Path:
    """A T2I-Adapter as one file: diffusers keys (``adapter.*``) or TencentARC's original ones."""
    from pipelines.models.t2i_adapter import adapter_to_original

    if layout == "original":
        return save_tensors(adapter_to_original(model), path)
    if layout != "diffusers":
        raise ValueError(f"unknown T2I-Adapter layout {layout!r}")
    return save_tensors(dict(model.state_dict()), path)
