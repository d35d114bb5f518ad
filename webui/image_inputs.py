"""Images coming in from widgets (uploads, the mask editor, galleries) and "Send to" between tabs.

UI plumbing only: decoding goes through ``pipelines.imaging.uploads.load_user_image`` (size limit, damaged files) and
every problem a user can cause becomes a ``gr.Error`` with a message they can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.masks import mask_from_editor
from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS, load_user_image
from webui.components import OutputPanel

MAX_UPLOAD_PIXELS = DEFAULT_MAX_UPLOAD_PIXELS


def read_image(value: Any, what: str = "image") -> Image.Image | None:
    """A widget's image value (a file path or a PIL image) decoded defensively; None when the widget is empty."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, Image.Image):
            return load_user_image(value, MAX_UPLOAD_PIXELS)
        if isinstance(value, str | Path):
            return load_user_image(Path(value), MAX_UPLOAD_PIXELS)
    except EaselError as exc:
        raise gr.Error(f"{what.capitalize()}: {exc}") from exc
    raise gr.Error(f"The {what} could not be read (unexpected value of type {type(value).__name__}).")


def editor_background(value: dict[str, Any] | None) -> Image.Image:
    """The picture in the mask editor, as RGB; a clear error when there is none."""
    background = read_image((value or {}).get("background"), "image")
    if background is None:
        raise gr.Error("No image: upload or paste a picture into the editor first (or send one from a gallery).")
    return background.convert("RGB")


def editor_mask(value: dict[str, Any] | None, uploaded: Any) -> Image.Image:
    """The uploaded black-and-white mask if there is one (it replaces painting), else the painted strokes."""
    upload = read_image(uploaded, "mask")
    if upload is not None:
        return upload
    mask = mask_from_editor(value)
    if mask is None:
        raise gr.Error("Paint a mask first: brush over the part of the picture you want to change.")
    return mask


def editor_value(image: Image.Image) -> dict[str, Any]:
    """An editor value with ``image`` as the background and nothing painted."""
    return {"background": image, "layers": [], "composite": image}


def gallery_selection(gallery: Sequence[Any] | None, state: dict | None) -> Image.Image:
    """The gallery image the user clicked (the first one if none), decoded."""
    items = list(gallery or [])
    if not items:
        raise gr.Error("Nothing to send yet: generate an image first.")
    index = (state or {}).get("selected", 0)
    item = items[index if isinstance(index, int) and 0 <= index < len(items) else 0]
    media = item[0] if isinstance(item, tuple | list) else item
    image = read_image(media, "image")
    assert image is not None
    return image


def wire_send_buttons(
    tabs: gr.Tabs, panels: Sequence[OutputPanel], img2img_image: gr.Image, inpaint_editor: gr.ImageEditor
) -> None:
    """Every gallery's "Send to img2img / inpaint" puts the selected image there and switches to that tab."""

    def to_img2img(gallery: Sequence[Any] | None, state: dict | None) -> tuple[Any, Any]:
        return gallery_selection(gallery, state), gr.Tabs(selected="img2img")

    def to_inpaint(gallery: Sequence[Any] | None, state: dict | None) -> tuple[Any, Any]:
        return editor_value(gallery_selection(gallery, state)), gr.Tabs(selected="inpaint")

    targets = {"img2img": (to_img2img, img2img_image), "inpaint": (to_inpaint, inpaint_editor)}
    for panel in panels:
        for target, button in panel.send_buttons.items():
            handler, component = targets[target]
            button.click(
                handler, [panel.gallery, panel.result_state], [component, tabs], api_visibility="private", queue=False
            )
