"""txt2img's extra controls: hires fix, variation seed, VAE and styles. Widgets only; the engine does the work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.fields import FIELDS
from webui.derived import derive
from webui.field_widgets import build

SAME = "Use same sampler"
HIRES_WIDGETS = tuple(f.name for f in FIELDS.select("hires") if f.widget is not None)
EXTRA_FIELDS = (*HIRES_WIDGETS, "denoising_strength", *FIELDS.names("variation"))
"""What the hires fix and variation accordions hold; their values travel to the handler as one State."""


@dataclass
class GenerationExtras:
    widgets: dict[str, gr.components.Component]
    state: gr.State  # the current values as GenerationRequest kwargs

    def inputs(self) -> list[gr.components.Component]:
        return [self.widgets[name] for name in EXTRA_FIELDS]


def extras_to_kwargs(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Widget values (in ``GenerationExtras.inputs`` order) -> GenerationRequest keyword arguments."""
    kwargs = FIELDS.from_values(EXTRA_FIELDS, values)
    if kwargs["hr_sampler_name"] in ("", SAME):
        kwargs["hr_sampler_name"] = None
    return kwargs


def build_generation_extras(tab: str, hires_upscalers: list[str] | None = None) -> GenerationExtras:
    """``hires_upscalers``: the engine's names (latent, PIL and model upscalers); None: the built-in ones."""
    w: dict[str, gr.components.Component] = {}

    def put(name: str, **overrides: Any) -> None:
        w[name] = build(name, tab, **overrides)

    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hires_accordion"):
        put("enable_hr")
        with gr.Row():
            put("hr_upscaler", choices=hires_upscalers)
            put("hr_second_pass_steps")
            put("denoising_strength", value=0.7)
        with gr.Row():
            put("hr_scale")
            put("hr_resize_x")
            put("hr_resize_y")
        put("hr_sampler_name")
        with gr.Row():
            put("hr_prompt")
            put("hr_negative_prompt")
    with gr.Accordion("Variation seed", open=False, elem_id=f"{tab}_variation_accordion"):
        with gr.Row():
            put("subseed")
            put("subseed_strength")
        with gr.Row():
            put("seed_resize_from_w")
            put("seed_resize_from_h")
    state = gr.State(extras_to_kwargs([w[name].value for name in EXTRA_FIELDS]))

    def collect(*values: Any) -> dict[str, Any]:
        return extras_to_kwargs(values)

    # The values travel in a State so the txt2img API endpoint keeps its positional signature for old clients.
    derive(collect, [w[n] for n in EXTRA_FIELDS], state)
    return GenerationExtras(w, state)
