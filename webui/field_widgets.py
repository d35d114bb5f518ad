"""Gradio components from the field registry's widget descriptions (``pipelines.fields``).

A tab lays its widgets out; what each one is (kind, label, range, choices, elem_id) comes from its field's
declaration, so a field added to the registry shows the same way in every tab and is found by "Send to".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from pipelines.fields import FIELDS, RequestField, Widget


def elem_id(tab: str, field: RequestField) -> str:
    assert field.widget is not None, field.name
    return f"{tab}_{field.widget.elem}"


def widget_value(field: RequestField, value: Any) -> Any:
    """A request value as its widget shows it (index radios show the choice's label)."""
    spec = field.widget
    if spec is not None and spec.index and spec.choices is not None and value is not None:
        choices = spec.choices()
        position = int(value)
        return choices[position] if 0 <= position < len(choices) else choices[0]
    return value


def build(name: str, tab: str, **overrides: Any) -> gr.components.Component:
    """The component for field ``name`` in ``tab``; ``overrides`` are Gradio keyword arguments (value, scale...)."""
    field = FIELDS[name]
    spec = field.widget
    assert spec is not None, f"field '{name}' declares no widget"
    value = overrides.pop("value", field.default)
    if spec.index and spec.choices is not None and value is not None:
        value = widget_value(field, value)
    return from_widget(spec, value, elem_id(tab, field), **overrides)


def from_widget(spec: Widget, value: Any, elem: str, **overrides: Any) -> gr.components.Component:
    """A component from a widget description alone (a script's arg has no field); index choices show as labels."""
    given = overrides.pop("choices", None)  # a list only the app knows (the hires upscalers with the models)
    common: dict[str, Any] = {"label": spec.label, "elem_id": elem, **overrides}
    if spec.kind == "slider":
        return gr.Slider(spec.minimum, spec.maximum, value=value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(value=value, precision=spec.precision, **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(bool(value), **common)
    if spec.kind == "textbox":
        return gr.Textbox(value=value or "", lines=spec.lines, **common)
    choices: Sequence[str] = given if given is not None else (spec.choices() if spec.choices else ())
    shown = value
    if spec.index and isinstance(value, int) and not isinstance(value, bool):
        shown = choices[value] if 0 <= value < len(choices) else (choices[0] if choices else None)
    if shown is None and choices and spec.kind != "multiselect":
        shown = choices[0]
    kind = "index" if spec.index else "value"
    if spec.kind == "dropdown":
        return gr.Dropdown(list(choices), value=shown, type=kind, **common)
    if spec.kind == "multiselect":
        return gr.Dropdown(list(choices), value=list(shown or []), multiselect=True, **common)
    if spec.kind == "radio":
        return gr.Radio(list(choices), value=shown, type=kind, **common)
    raise ValueError(f"unknown widget kind '{spec.kind}' for '{elem}'")
