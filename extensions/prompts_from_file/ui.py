"""The script's controls: the generic widgets of its args, plus a .txt upload that fills the text box."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.field_widgets import from_widget

MAX_FILE_BYTES = 1_000_000


def build_ui(tab: str, args: Any) -> list[Any]:
    widgets = [from_widget(arg.widget, arg.default, f"{tab}_prompts_file_{arg.widget.elem}") for arg in args]
    upload = gr.File(
        label="Upload prompt inputs", file_types=[".txt"], type="filepath", elem_id=f"{tab}_prompts_upload"
    )

    def read(path: str | None) -> Any:
        if not path:
            return gr.update()
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise gr.Error("The prompts file is larger than 1 MB.")
        return data.decode("utf-8", errors="replace")

    upload.change(read, upload, widgets[3], queue=False, api_visibility="private")
    return widgets
