"""ControlNet, built in: up to N units guiding generation, driven as sd-webui-controlnet is.

Request values: fields ``controlnet.unit_0`` ... ``unit_{N-1}`` (kind dict), each one sd-webui-controlnet unit
(``units.py``), so API clients send ``alwayson_scripts: {"controlnet": {"args": [unit, unit, ...]}}`` exactly as to
that extension. Models live in ``--controlnet-dir`` (default ``models/ControlNet``); how they run is ``control.py``.
Routes ``/controlnet/...`` are ``api.py``; the accordion is ``ui.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipelines.errors import EaselError

from . import masking, preprocessors
from .annotators import LIBRARY
from .control import ControlNetRuntime, find_model
from .infotext import read_infotext
from .units import MAX_UNITS

VERSION = 3  # sd-webui-controlnet's API version, which clients check


def setup(ctx: Any) -> None:
    # sd-webui-controlnet's config.json keys, so a config.json copied from A1111 keeps its unit count
    count = ctx.setting(
        "unit_count",
        3,
        f"ControlNet units per tab (1-{MAX_UNITS}; requires restart)",
        config_key="control_net_unit_count",
        bounds=(1, MAX_UNITS),
        section="ControlNet",
    )
    count = min(max(1, count), MAX_UNITS)
    cache_size = ctx.setting(
        "model_cache_size",
        2,
        "ControlNet models kept in RAM (requires restart)",
        config_key="control_net_model_cache_size",
        bounds=(1, 16),
        section="ControlNet",
    )
    runtime = ControlNetRuntime(
        lambda: ctx.catalog.model_folders("controlnet"), lambda: ctx.catalog.allow_pickle, count, max(1, cache_size)
    )
    LIBRARY.bind(
        lambda: ctx.catalog.model_folders("annotators"), lambda: ctx.catalog.device, lambda: ctx.catalog.allow_pickle
    )
    for i in range(count):
        ctx.field(f"unit_{i}", dict, {}, label=f"ControlNet unit {i}")

    @ctx.before_request
    def describe(request: Any) -> Any:
        """Checks the units before the request waits in line, and writes them into the infotext."""
        _, units = runtime.units(request)
        if not units:
            return None
        extra = dict(request.extra_params)
        for unit in units:
            if unit.image is None and request.mode == "txt2img":
                raise EaselError(f"ControlNet unit {unit.index}: give a control image (or disable the unit)")
            free = preprocessors.find(unit.module).model_free
            label = "None" if free else find_model(runtime.folders(), unit.model).label
            extra[f"ControlNet {unit.index}"] = unit.describe(label)
        return replace(request, extra_params=extra)

    @ctx.infotext_reader
    def read(fields: Any) -> Any:
        """``ControlNet N: "Module: ..., Model: ..."`` back into unit values (PNG Info's "Send to", png-info)."""
        return read_infotext(fields, runtime.folders())

    ctx.request_modules(runtime.modules)  # counted and placed by the memory policy with the UNet
    ctx.model_patch(runtime.patch)
    ctx.model_call(runtime.model_call)

    @ctx.after_guidance
    def keep_outside(request: Any, denoised: Any, state: Any) -> Any:
        """inpaint_only units outside the inpaint tab: the clean-image prediction keeps the unmasked picture."""
        return masking.after_guidance(runtime.prepared(request), denoised)

    @ctx.after_image
    def composite(request: Any, image: Any, seed: int) -> Any:
        return masking.after_image(runtime.prepared(request), image)

    def routes() -> Any:
        from .api import build_router

        return build_router(runtime)

    ctx.routes(routes)

    def build(tab: str) -> Any:
        from .ui import build_accordion

        return build_accordion(tab, runtime)

    ctx.accordion(title="ControlNet", build=build)
