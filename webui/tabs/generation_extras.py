"""txt2img's extra controls: hires fix, variation seed, VAE and styles. Widgets only; the engine does the work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.sampling.hires import HIRES_UPSCALERS
from pipelines.sampling.samplers import SAMPLERS

SAME = "Use same sampler"
EXTRA_FIELDS = (
    "enable_hr",
    "hr_upscaler",
    "hr_second_pass_steps",
    "denoising_strength",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_sampler_name",
    "hr_prompt",
    "hr_negative_prompt",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
)


@dataclass
class GenerationExtras:
    widgets: dict[str, gr.components.Component]
    state: gr.State  # the current values as GenerationRequest kwargs

    def inputs(self) -> list[gr.components.Component]:
        return [self.widgets[name] for name in EXTRA_FIELDS]


def extras_to_kwargs(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Widget values (in ``GenerationExtras.inputs`` order) -> GenerationRequest keyword arguments."""
    kwargs = dict(zip(EXTRA_FIELDS, values, strict=True))
    for name in ("hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "seed_resize_from_w", "seed_resize_from_h"):
        kwargs[name] = int(kwargs[name] or 0)
    kwargs["subseed"] = int(kwargs["subseed"]) if kwargs["subseed"] is not None else -1
    for name in ("hr_scale", "denoising_strength", "subseed_strength"):
        kwargs[name] = float(kwargs[name] or 0)
    kwargs["enable_hr"] = bool(kwargs["enable_hr"])
    if kwargs["hr_sampler_name"] in (None, "", SAME):
        kwargs["hr_sampler_name"] = None
    kwargs["hr_prompt"] = kwargs["hr_prompt"] or ""
    kwargs["hr_negative_prompt"] = kwargs["hr_negative_prompt"] or ""
    return kwargs


def build_generation_extras(tab: str) -> GenerationExtras:
    w: dict[str, gr.components.Component] = {}
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hires_accordion"):
        w["enable_hr"] = gr.Checkbox(False, label="Enable hires. fix", elem_id=f"{tab}_enable_hr")
        with gr.Row():
            w["hr_upscaler"] = gr.Dropdown(
                list(HIRES_UPSCALERS), value="Latent", label="Upscaler", elem_id=f"{tab}_hr_upscaler"
            )
            w["hr_second_pass_steps"] = gr.Slider(
                0, 150, value=0, step=1, label="Hires steps (0: same)", elem_id=f"{tab}_hr_steps"
            )
            w["denoising_strength"] = gr.Slider(
                0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id=f"{tab}_denoising_strength"
            )
        with gr.Row():
            w["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id=f"{tab}_hr_scale")
            w["hr_resize_x"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize width to", elem_id=f"{tab}_hr_resize_x"
            )
            w["hr_resize_y"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize height to", elem_id=f"{tab}_hr_resize_y"
            )
        w["hr_sampler_name"] = gr.Dropdown(
            [SAME, *SAMPLERS], value=SAME, label="Hires sampler", elem_id=f"{tab}_hr_sampler"
        )
        with gr.Row():
            w["hr_prompt"] = gr.Textbox(label="Hires prompt (empty: same)", lines=2, elem_id=f"{tab}_hr_prompt")
            w["hr_negative_prompt"] = gr.Textbox(
                label="Hires negative prompt (empty: same)", lines=2, elem_id=f"{tab}_hr_neg_prompt"
            )
    with gr.Accordion("Variation seed", open=False, elem_id=f"{tab}_variation_accordion"):
        with gr.Row():
            w["subseed"] = gr.Number(-1, label="Variation seed (-1 = random)", precision=0, elem_id=f"{tab}_subseed")
            w["subseed_strength"] = gr.Slider(
                0, 1, value=0, step=0.01, label="Variation strength", elem_id=f"{tab}_subseed_strength"
            )
        with gr.Row():
            w["seed_resize_from_w"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{tab}_seed_resize_from_w"
            )
            w["seed_resize_from_h"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from height", elem_id=f"{tab}_seed_resize_from_h"
            )
    state = gr.State(extras_to_kwargs([w[name].value for name in EXTRA_FIELDS]))

    def collect(*values: Any) -> dict[str, Any]:
        return extras_to_kwargs(values)

    # The values travel in a State so the txt2img API endpoint keeps its positional signature for old clients.
    for name in EXTRA_FIELDS:
        w[name].change(collect, [w[n] for n in EXTRA_FIELDS], state, queue=False, api_visibility="private")
    return GenerationExtras(w, state)
