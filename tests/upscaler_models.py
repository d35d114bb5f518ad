"""Tiny random-weight upscalers in the key layouts published models use, built by code and saved as real files.

``rrdbnet_state``: an ESRGAN RRDBNet in BasicSR's layout (``conv_first``, ``body.N.rdbK.convJ``...) as Real-ESRGAN's
``RealESRGAN_x4plus.pth`` ships it, wrapped in ``params_ema``. ``compact_state``: a Real-ESRGAN compact SRVGGNet
(``body.2k`` convolutions, ``body.2k+1`` PReLUs, a pixel-shuffle last conv) as ``realesr-general-x4v3.pth``, wrapped
in ``params``. The weights are small so the outputs stay inside [0, 1] rather than clamping flat.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _conv(state: dict[str, torch.Tensor], key: str, out_ch: int, in_ch: int, gen: torch.Generator, std: float) -> None:
    state[f"{key}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std
    state[f"{key}.bias"] = torch.randn(out_ch, generator=gen) * 0.01


def rrdbnet_state(blocks: int = 2, filters: int = 8, growth: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 4x RRDBNet (BasicSR layout) with ``blocks`` residual-in-residual dense blocks."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", filters, 3, gen, 0.1)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for j in range(1, 6):
                out_ch = filters if j == 5 else growth
                _conv(state, f"body.{block}.rdb{rdb}.conv{j}", out_ch, filters + (j - 1) * growth, gen, 0.05)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(state, name, filters, filters, gen, 0.1)
    _conv(state, "conv_last", 3, filters, gen, 0.1)
    state["conv_last.bias"] = torch.full((3,), 0.5)  # mid-grey plus detail: no clamping to flat black
    return state


def compact_state(convs: int = 2, filters: int = 8, scale: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN compact SRVGGNet: ``convs`` body convolutions, pixel-shuffle upsampling by ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "body.0", filters, 3, gen, 0.1)
    state["body.1.weight"] = torch.full((filters,), 0.25)
    for i in range(convs):
        _conv(state, f"body.{2 * i + 2}", filters, filters, gen, 0.1)
        state[f"body.{2 * i + 3}.weight"] = torch.full((filters,), 0.25)
    _conv(state, f"body.{2 * convs + 2}", 3 * scale * scale, filters, gen, 0.1)
    return state


def save_pth(state: dict[str, torch.Tensor], path: Path, wrapper: str) -> Path:
    """A plain dict of tensors, as ``torch.save`` writes real checkpoints (no pickled classes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrapper: state}, path)
    return path


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def add_upscalers(models: Path) -> dict[str, Path]:
    """The test upscalers in A1111's folders under ``models``: name -> path."""
    return {
        "tiny-esrgan-4x": save_pth(rrdbnet_state(), models / "ESRGAN" / "tiny-esrgan-4x.pth", "params_ema"),
        "tiny-compact-2x": save_pth(compact_state(), models / "RealESRGAN" / "tiny-compact-2x.pth", "params"),
        "tiny-compact-2x-st": save_safetensors(
            compact_state(), models / "RealESRGAN" / "tiny-compact-2x-st.safetensors"
        ),
    }
