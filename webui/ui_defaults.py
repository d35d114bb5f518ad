"""Default values of the tabs' fields, as A1111's ``ui-config.json`` keeps them (``<tab>/<label>/value`` keys).

The tabs are built once at start, so a changed default shows after a restart (the Settings tab says so). The
values are checked with the field's own coercion and bounds (``pipelines.fields``): a bad one in the file is
skipped with a warning, never a start-up failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import FIELDS, MODES, RequestField
from webui.field_widgets import elem_id, widget_value

log = logging.getLogger(__name__)

DEFAULT_FIELDS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "schedule_type",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_count",
    "batch_size",
    "denoising_strength",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res_padding",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
)
"""Fields whose starting value the Settings tab lets a user choose, per tab."""


def ui_key(tab: str, field: RequestField) -> str:
    assert field.widget is not None, field.name
    return f"{tab}/{field.widget.label}/value"


def default_fields(tab: str) -> list[RequestField]:
    return [FIELDS[name] for name in DEFAULT_FIELDS if name in FIELDS and tab in FIELDS[name].modes]


def checked_default(field: RequestField, value: Any) -> Any:
    """``value`` (a widget's or the file's) as the field's engine value; EaselError when out of bounds.

    Index radios and dropdowns (masked content...) show labels: a label is turned back into its index here.
    """
    spec = field.widget
    if spec is not None and spec.index and spec.choices is not None:
        choices = list(spec.choices())
        if isinstance(value, str) and value in choices:
            value = choices.index(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise EaselError(f"{field.name}: {value!r} is not one of {', '.join(choices)}")
    elif spec is not None and spec.choices is not None and value is not None:
        choices = list(spec.choices())
        if value not in choices:
            raise EaselError(f"{field.name}: '{value}' is not one of {', '.join(map(str, choices))}")
    coerced = field.coerce(value)
    field.check(coerced)
    return coerced


def tab_defaults(ui: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The valid ``<tab>/<label>/value`` entries of ``ui`` (engine values) and a warning for each bad one."""
    good: dict[str, Any] = {}
    problems: list[str] = []
    for tab in MODES:
        for field in default_fields(tab):
            key = ui_key(tab, field)
            if key in ui:
                try:
                    good[key] = checked_default(field, ui[key])
                except EaselError as exc:
                    problems.append(f"ui-config.json: {key}: {exc}; the built-in default is used")
    return good, problems


def apply_ui_defaults(blocks: gr.Blocks, ui: Mapping[str, Any], clip_skip: int = 1) -> list[str]:
    """Set the starting value of each tab's widgets from ``ui``; call inside ``with blocks`` before it closes.

    ``clip_skip``: the CLIP_stop_at_last_layers setting, the clip skip widgets' starting value.
    """
    good, problems = tab_defaults(ui)
    targets: dict[str, Any] = {}
    for tab in MODES:
        for field in default_fields(tab):
            key = ui_key(tab, field)
            if key in good:
                targets[elem_id(tab, field)] = widget_value(field, good[key])
        targets[elem_id(tab, FIELDS["clip_skip"])] = clip_skip
    for block in blocks.blocks.values():
        target = getattr(block, "elem_id", None)
        if target in targets and isinstance(block, gr.components.Component):
            block.value = block.postprocess(targets[target])
    for text in problems:
        log.warning("%s", text)
    return problems  # the banner shows them too (webui.app.settings_banner)
