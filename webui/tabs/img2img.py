"""The img2img tab: an init image + prompt + parameters -> images in the gallery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.fields import FIELDS
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
from webui.image_inputs import read_image
from webui.runner import session_of
from webui.tabs.header import build_tab_header
from webui.tabs.txt2img import result_updates
from webui.users import ui_user


@dataclass
class Img2ImgTab:
    init_image: gr.Image
    output: OutputPanel


def build_img2img_tab(ctx: AppContext, checkpoint: gr.Dropdown, derived: Sequence[Derivation] = ()) -> Img2ImgTab:
    header = build_tab_header(ctx, "img2img")
    prompts, networks = header.prompts, header.networks
    with gr.Row():
        with gr.Column(scale=1):
            init_image = gr.Image(
                label="Image for img2img",
                type="filepath",
                image_mode=None,  # keep the file as uploaded; it is decoded (size-checked) in the handler
                format="png",
                sources=["upload", "clipboard"],
                elem_id="img2img_image",
                height=400,
            )
            resize_mode = build("resize_mode", "img2img")
            denoising = build("denoising_strength", "img2img")
            panel = build_param_panel("img2img", checkpoints=ctx.checkpoint_names())
            ctx.checkpoint_lists.append(panel.refiner["refiner_checkpoint"])
            ext = build_extension_inputs(ctx, "img2img")
        with gr.Column(scale=1):
            out = build_output_panel("img2img")

    def run(
        request: gr.Request,
        checkpoint_name: str | None,
        prompt: str,
        negative: str,
        image: str | None,
        resize: int,
        denoising_strength: float,
        *values: Any,
    ):
        init = read_image(image, "image")
        if init is None:
            raise gr.Error("No image: upload or paste a picture first (or send one from a gallery).")
        request_obj = GenerationRequest(
            mode="img2img",
            prompt=prompt or "",
            negative_prompt=negative or "",
            checkpoint=checkpoint_name or None,
            init_image=init,
            **FIELDS.from_values(("resize_mode", "denoising_strength"), (resize, denoising_strength)),
            **values_to_kwargs(values[:-2]),
            **(values[-2] or {}),  # the networks State, then the extensions': States keep the API's parameters
            **request_kwargs(values[-1]),
        )
        yield from result_updates(ctx, request_obj, session_of(request), ui_user(request))

    inputs = [
        checkpoint,
        prompts.prompt,
        prompts.negative_prompt,
        init_image,
        resize_mode,
        denoising,
        *panel.inputs(),
        networks.state,
        ext.state,
    ]
    click_after_sync(
        header.generate, derived, run, inputs=inputs, outputs=out.outputs(), api_name="img2img", concurrency_limit=None
    )
    panel.reuse_seed.click(selected_seed, [out.result_state], [panel.seed], api_visibility="private", queue=False)
    return Img2ImgTab(init_image, out)
