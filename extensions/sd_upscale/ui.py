"""SD upscale's controls: A1111's line of help, the tile overlap, the upscaler choice and the scale factor."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.field_widgets import from_widget


def build_ui(tab: str, args: Any) -> list[Any]:
    """One component per arg, in A1111's order; the first (the help text) is sent along and ignored."""
    info, overlap, upscaler, scale = args
    label = gr.HTML(f"<p style='margin-bottom:0.75em'>{info.default}</p>", elem_id=f"{tab}_sd_upscale_info")
    widgets = [label]
    for arg in (overlap, upscaler, scale):
        widgets.append(from_widget(arg.widget, arg.default, f"{tab}_sd_upscale_{arg.widget.elem}"))
    return widgets
