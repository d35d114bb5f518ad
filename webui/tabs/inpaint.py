"""The Inpaint tab: paint a mask over a picture (or extend its canvas) and regenerate just that part.

UI only. The mask comes from the editor's painted layers (or an uploaded black-and-white mask), the outpaint
canvas from ``pipelines.imaging.outpaint``; everything else is ``Engine.generate`` through ``result_updates``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import FIELDS
from pipelines.imaging.outpaint import outpaint_request
from pipelines.imaging.outpaint_canvas import OUTPAINT_FILLS, OUTPAINT_MAX, OUTPAINT_STEP
from pipelines.requests import GenerationRequest
from webui.components import (
    OutputPanel,
    build_output_panel,
    build_param_panel,
    selected_seed,
    values_to_kwargs,
)
from webui.context import AppContext
from webui.derived import Derivation, click_after_sync
from webui.extensions_ui import build_extension_inputs, request_kwargs
from webui.field_widgets import build
from webui.image_inputs import editor_background, editor_mask, editor_value
from webui.runner import session_of
from webui.tabs.header import build_tab_header
from webui.tabs.txt2img import result_updates
from webui.users import ui_user

INPAINT_FIELDS = (
    "mask_blur",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "inpaint_full_res",
    "inpainting_fill",
    "denoising_strength",
)
"""The inpaint panel's own fields, in the order the handlers receive them."""
OUTPAINT_SIDES = ("left", "right", "up", "down")
BRUSH_COLOUR = "#ff00ff"  # one colour: the mask is where anything was painted, the colour only has to show
BRUSH_SIZE = 24  # image pixels; the editor's brush-size slider changes it


@dataclass
class InpaintTab:
    editor: gr.ImageEditor
    output: OutputPanel


def build_inpaint_tab(ctx: AppContext, checkpoint: gr.Dropdown, derived: Sequence[Derivation] = ()) -> InpaintTab:
    header = build_tab_header(ctx, "inpaint")
    prompts, networks = header.prompts, header.networks
    with gr.Row():
        with gr.Column(scale=1):
            editor = gr.ImageEditor(
                label="Image: paint over what to change",
                type="pil",
                image_mode="RGBA",
                format="png",
                sources=["upload", "clipboard"],
                brush=gr.Brush(
                    colors=[BRUSH_COLOUR], default_color=BRUSH_COLOUR, color_mode="fixed", default_size=BRUSH_SIZE
                ),
                eraser=gr.Eraser(default_size=BRUSH_SIZE),
                transforms=(),
                layers=False,
                elem_id="inpaint_editor",
                height=520,
            )
            with gr.Accordion("Upload mask (replaces painting; white = change)", open=False):
                mask_upload = gr.Image(
                    label="Mask",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard"],
                    elem_id="inpaint_mask_upload",
                    height=240,
                )
            with gr.Row():
                mask_blur = build("mask_blur", "inpaint")
                padding = build("inpaint_full_res_padding", "inpaint")
            with gr.Row():
                mask_mode = build("inpainting_mask_invert", "inpaint")
                inpaint_area = build("inpaint_full_res", "inpaint")
            masked_content = build("inpainting_fill", "inpaint")
            denoising = build("denoising_strength", "inpaint")
            with gr.Accordion("Outpaint", open=False, elem_id="outpaint_accordion"):
                with gr.Row():
                    sides = gr.CheckboxGroup(
                        list(OUTPAINT_SIDES), value=["right"], label="Extend", elem_id="outpaint_sides"
                    )
                    pixels = gr.Slider(
                        OUTPAINT_STEP,
                        OUTPAINT_MAX,
                        value=128,
                        step=OUTPAINT_STEP,
                        label="Pixels to add",
                        elem_id="outpaint_pixels",
                    )
                with gr.Row():
                    fill = gr.Radio(
                        list(OUTPAINT_FILLS),
                        value=OUTPAINT_FILLS[0],
                        label="New area starts as",
                        elem_id="outpaint_fill",
                    )
                    outpaint = gr.Button(
                        "Outpaint", variant="primary", elem_id="outpaint_generate", scale=0, min_width=160
                    )
            panel = build_param_panel("inpaint", checkpoints=ctx.checkpoint_names())
            ctx.checkpoint_lists.append(panel.refiner["refiner_checkpoint"])
            ext = build_extension_inputs(ctx, "inpaint")
        with gr.Column(scale=1):
            out = build_output_panel("inpaint")

    def widget_request(
        checkpoint_name: str | None,
        prompt: str,
        negative: str,
        blur: float,
        pad: float,
        invert: int,
        area: int,
        content: int,
        strength: float,
        values: tuple[Any, ...],
    ) -> GenerationRequest:
        own = FIELDS.from_values(INPAINT_FIELDS, (blur, pad, invert, area, content, strength))
        return GenerationRequest(
            mode="inpaint",
            prompt=prompt or "",
            negative_prompt=negative or "",
            checkpoint=checkpoint_name or None,
            **own,
            **values_to_kwargs(values),
        )

    def run(
        request: gr.Request,
        checkpoint_name: str | None,
        prompt: str,
        negative: str,
        image: dict | None,
        uploaded_mask: str | None,
        blur: float,
        pad: float,
        invert: int,
        area: int,
        content: int,
        strength: float,
        *values: Any,
    ):
        init = editor_background(image)
        mask = editor_mask(image, uploaded_mask)
        # the networks and extensions States come last: the API keeps its positional order
        values, network_values, ext_values = values[:-2], values[-2], values[-1]
        base = widget_request(checkpoint_name, prompt, negative, blur, pad, invert, area, content, strength, values)
        request_obj = replace(base, init_image=init, mask=mask, **(network_values or {}), **request_kwargs(ext_values))
        yield from result_updates(ctx, request_obj, session_of(request), ui_user(request))

    def run_outpaint(
        request: gr.Request,
        checkpoint_name: str | None,
        prompt: str,
        negative: str,
        image: dict | None,
        extend: list[str] | None,
        amount: float,
        fill_mode: str,
        blur: float,
        pad: float,
        area: int,
        strength: float,
        *values: Any,
    ) -> Iterator[tuple[Any, ...]]:
        init = editor_background(image)
        chosen = set(extend or [])
        if not chosen:
            raise gr.Error("Choose at least one side to extend (left, right, up or down).")
        amounts = {side: int(amount) if side in chosen else 0 for side in OUTPAINT_SIDES}
        values, network_values, ext_values = values[:-2], values[-2], values[-1]
        base = widget_request(checkpoint_name, prompt, negative, blur, pad, 0, area, 1, strength, values)
        try:
            base = replace(base, init_image=init, **(network_values or {}), **request_kwargs(ext_values))
            request_obj = outpaint_request(base, **amounts, fill=fill_mode)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        for update in result_updates(ctx, request_obj, session_of(request), ui_user(request)):
            images = update[0]
            done = isinstance(images, list) and images
            # the result becomes the editor's picture: outpaint again, or paint a mask on it, with no re-upload
            yield (*update, editor_value(images[0]) if done else gr.update())

    common = [checkpoint, prompts.prompt, prompts.negative_prompt, editor]
    inpaint_inputs = [mask_upload, mask_blur, padding, mask_mode, inpaint_area, masked_content, denoising]
    click_after_sync(
        header.generate,
        derived,
        run,
        inputs=[*common, *inpaint_inputs, *panel.inputs(), networks.state, ext.state],
        outputs=out.outputs(),
        api_name="inpaint",
        concurrency_limit=None,
    )
    outpaint_inputs = [sides, pixels, fill, mask_blur, padding, inpaint_area, denoising]
    click_after_sync(
        outpaint,
        derived,
        run_outpaint,
        inputs=[*common, *outpaint_inputs, *panel.inputs(), networks.state, ext.state],
        outputs=[*out.outputs(), editor],
        api_name="outpaint",
        concurrency_limit=None,
    )
    panel.reuse_seed.click(selected_seed, [out.result_state], [panel.seed], api_visibility="private", queue=False)
    return InpaintTab(editor, out)
