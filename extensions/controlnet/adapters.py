"""ControlNet-Union and T2I-Adapter units at run time (the model kinds beyond a plain ControlNet).

ControlNet-Union: runs where a plain ControlNet runs (same residuals, weight, control modes and window), with one
more input, the control type. A unit's ``union_control_type`` names it (sd-webui-controlnet's names: OpenPose, Depth,
Soft Edge, Canny, Normal Map, Segmentation, Tile, Inpaint; or xinsir's, or the index); left "Unknown" it comes from
the preprocessor's kind as sd-webui-controlnet and Forge group them (hed/pidi/scribble -> Soft Edge,
canny/lineart/mlsd -> Canny, tile/blur -> Tile, inpaint -> Inpaint ...). A map uploaded with preprocessor "none"
needs the type said outright.

T2I-Adapter: its features depend on the control map alone, so they are computed once per hint size per request and
only scaled per call; they reach the UNet as ``down_intrablock_additional_residuals`` while the step is in the unit's
guidance window. Control modes as sd-webui-controlnet applies them to adapters: "Balanced" is the weight on every
level; the two soft modes scale the levels by 0.25, 0.62, 0.825 and 1.0 (shallow to deep), "ControlNet is more
important" on the conditional half only.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetUnionModel, T2IAdapter

from pipelines.errors import EaselError
from pipelines.models.controlnet_union import UNION_CONTROL_TYPES, control_type_index, union_inputs
from pipelines.sampling.denoiser import ModelInputs, with_intrablock_residuals

T2I_SOFT_SCALES = (0.25, 0.62, 0.825, 1.0)
UNKNOWN = "Unknown"
# preprocessor-name fragments -> union control type, first match wins (sd-webui-controlnet's and Forge's grouping)
_UNION_BY_MODULE: tuple[tuple[tuple[str, ...], int], ...] = (
    (("openpose", "densepose"), 0),
    (("depth",), 1),
    (("softedge", "hed", "pidi", "scribble", "ted", "sketch"), 2),
    (("canny", "lineart", "mlsd", "invert"), 3),
    (("normal",), 4),
    (("seg",), 5),
    (("tile", "blur"), 6),
    (("inpaint",), 7),
)


def is_union(model: Any) -> bool:
    return isinstance(model, ControlNetUnionModel)


def is_t2i(model: Any) -> bool:
    return isinstance(model, T2IAdapter)


def union_type(unit: Any, model: ControlNetUnionModel) -> int:
    """The control type index of a union unit: its ``union_control_type``, else its preprocessor's kind."""
    available = int(model.config.num_control_type)
    where = f"ControlNet unit {unit.index}"
    named = str(getattr(unit, "union_control_type", UNKNOWN) or UNKNOWN).strip()
    try:
        if named.lower() != UNKNOWN.lower():
            return control_type_index(named, available)
        module = unit.module.lower()
        for fragments, index in _UNION_BY_MODULE:
            if any(f in module for f in fragments):
                return control_type_index(index, available)
    except EaselError as exc:
        raise EaselError(f"{where}: {exc}") from None
    names = ", ".join(n for n, _ in UNION_CONTROL_TYPES[:available])
    raise EaselError(
        f"{where}: {unit.model} is a ControlNet-Union model and preprocessor '{unit.module}' does not say which kind "
        f"of map this is; set union_control_type ({names})"
    )


def prepare(prepared: Any) -> None:
    """Per request, before sampling: a union unit's control type checked and kept (errors before any step runs)."""
    if is_union(prepared.model):
        prepared.extra["union_type"] = union_type(prepared.unit, prepared.model)


def control_inputs(prepared: Any, cond: torch.Tensor) -> dict[str, Any]:
    """The control-map arguments of the unit's ControlNet call: a plain ControlNet's, or a union's with its type."""
    if is_union(prepared.model):
        return union_inputs(prepared.model, prepared.extra["union_type"], cond)
    return {"controlnet_cond": cond}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def features(prepared: Any, height: int, width: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """The adapter's feature maps ``[1, C, h, w]`` for latents of ``height`` x ``width`` pixels, computed once.

    The hint is fitted to the size rounded up to the adapter's unshuffle factor (SDXL's 16 need not divide the
    image); the features then have the UNet's own sizes, since both halve with rounding up.
    """
    model = prepared.model
    key = ("t2i", height, width, device, dtype)
    if key not in prepared.extra:
        factor = int(model.config.downscale_factor)
        hint = prepared.hint(_round_up(height, factor), _round_up(width, factor), device, dtype)
        if model.config.in_channels == 1:  # sketch / canny / lineart adapters take one gray channel
            hint = hint.mean(dim=1, keepdim=True)
        with torch.no_grad():
            prepared.extra[key] = [f.to(dtype) for f in model(hint)]
    return prepared.extra[key]


def level_scales(count: int, weight: float, control_mode: int) -> list[float]:
    """The weight per feature level; soft modes as sd-webui-controlnet pairs levels with its four factors (from
    the shallowest: an adapter with fewer levels takes the first ones, any beyond four keep the full weight)."""
    if control_mode == 0:
        return [weight] * count
    soft = (*T2I_SOFT_SCALES, *([1.0] * max(0, count - len(T2I_SOFT_SCALES))))
    return [weight * s for s in soft[:count]]


def add_features(prepared: Any, inputs: ModelInputs, rows: slice | None) -> ModelInputs:
    """``inputs`` with the unit's adapter features (scaled by weight and mode) on ``rows`` of the UNet batch."""
    if rows is None:
        return inputs
    sample = inputs.sample
    maps = features(prepared, sample.shape[-2] * 8, sample.shape[-1] * 8, sample.device, sample.dtype)
    unit = prepared.unit
    batch = sample.shape[0]
    mask = torch.zeros(batch, 1, 1, 1, device=sample.device, dtype=sample.dtype)
    mask[rows] = 1
    scales = level_scales(len(maps), unit.weight, unit.control_mode)
    return with_intrablock_residuals(inputs, [f * s * mask for f, s in zip(maps, scales, strict=True)])
