"""The PNG Info tab: the generation parameters stored in an image."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from pipelines.fields import MODES
from pipelines.metadata.infotext import parse_infotext, read_image_parameters


def read_png_info(image: Image.Image | None) -> tuple[str, dict]:
    """The raw parameters text and its parsed fields; a clear note when the image carries none."""
    if image is None:
        return "", {}
    text = read_image_parameters(image)
    if not text:
        return "This image has no generation parameters.", {}
    return text, parse_infotext(text)


def build_png_info_tab() -> None:
    with gr.Row():
        image = gr.Image(
            label="Source",
            type="pil",
            sources=["upload", "clipboard"],
            elem_id="png_info_image",
            image_mode=None,
            format="png",
        )
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, buttons=["copy"], elem_id="png_info_text")
            with gr.Row():
                for tab in MODES:
                    gr.Button(f"Send to {tab}", elem_id=f"png_info_send_{tab}", size="sm")  # wired in prompt_tools
            fields = gr.JSON(label="Fields", elem_id="png_info_fields")
    image.change(read_png_info, image, [text, fields], api_name="png_info")
