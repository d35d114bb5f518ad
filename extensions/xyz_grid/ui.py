"""The X/Y/Z plot's controls in a generation tab: per axis a type, a text box of values and, for axes with choices,
a multi-select (shown instead of the text box unless "Use text inputs" is ticked). Returns them in args order."""

from __future__ import annotations

from typing import Any

import gradio as gr

from pipelines.extensions.context import Catalog

from .axes import axes_for


def build_ui(tab: str, catalog: Catalog) -> list[Any]:
    axes = axes_for(tab, catalog)
    labels = [a.label for a in axes]
    out: list[Any] = []
    types, texts, picks = [], [], []
    for name, default in (("X", 1), ("Y", 0), ("Z", 0)):
        key = name.lower()
        with gr.Row():
            elem = f"{tab}_xyz_{key}"
            kind = gr.Dropdown(
                labels, value=labels[default], type="index", label=f"{name} type", elem_id=f"{elem}_type"
            )
            text = gr.Textbox(label=f"{name} values", elem_id=f"{elem}_values", scale=3)
            pick = gr.Dropdown(
                [], value=[], multiselect=True, label=f"{name} values", visible=False, elem_id=f"{elem}_picked", scale=3
            )
        out += [kind, text, pick]
        types.append(kind)
        texts.append(text)
        picks.append(pick)
    with gr.Row():
        legend = gr.Checkbox(True, label="Draw legend", elem_id=f"{tab}_xyz_draw_legend")
        lone = gr.Checkbox(False, label="Include Sub Images", elem_id=f"{tab}_xyz_include_lone_images")
        sub = gr.Checkbox(False, label="Include Sub Grids", elem_id=f"{tab}_xyz_include_sub_grids")
        keep = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=f"{tab}_xyz_no_fixed_seeds")
    with gr.Row():
        margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id=f"{tab}_xyz_margin_size")
        csv_mode = gr.Checkbox(False, label="Use text inputs instead of dropdowns", elem_id=f"{tab}_xyz_csv_mode")
        raw = gr.Checkbox(False, label="Take values as written (no ranges)", elem_id=f"{tab}_xyz_raw_mode")
    out += [legend, lone, sub, keep, margin, csv_mode, raw]

    def show(index: int | None, text_only: bool) -> tuple[Any, Any]:
        axis = axes[index or 0]
        has_choices = axis.choices is not None and not text_only
        choices = list(axis.choices()) if axis.choices is not None else []
        return (
            gr.update(visible=not has_choices),
            gr.update(choices=choices, value=[], visible=has_choices),
        )

    for kind, text, pick in zip(types, texts, picks, strict=True):
        kind.change(show, [kind, csv_mode], [text, pick], queue=False, api_visibility="private")
        csv_mode.change(show, [kind, csv_mode], [text, pick], queue=False, api_visibility="private")
    return out
