"""Widgets every generation tab shares, built by one function so no tab carries a copy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from pipelines.fields import FIELDS, NO_REFINER
from webui import field_widgets
from webui.derived import derive

PARAM_FIELDS = tuple(FIELDS.names("params"))
"""The parameter panel's fields, in the order its values reach a handler (and the txt2img API's order)."""
REFINER_FIELDS = tuple(FIELDS.names("refiner"))


@dataclass
class PromptBoxes:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    read_parameters: gr.Button | None = None  # A1111's ↙: fill the fields from an infotext pasted in the prompt
    token_counters: tuple[gr.HTML, gr.HTML] | None = None  # (prompt, negative); webui/prompt_tools.py updates them


@dataclass
class ParamPanel:
    """The generation parameters of one tab, in the order ``values_to_kwargs`` expects."""

    sampler: gr.Dropdown
    schedule_type: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    seed: gr.Number
    clip_skip: gr.Slider
    random_seed: gr.Button
    reuse_seed: gr.Button
    refiner: dict[str, gr.components.Component] = field(default_factory=dict)
    refiner_state: gr.State | None = None  # the refiner's values: a State, so the API's positional order stays

    def inputs(self) -> list[gr.components.Component]:
        state = [] if self.refiner_state is None else [self.refiner_state]
        return [*(getattr(self, name) for name in PARAM_FIELDS), *state]


def values_to_kwargs(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Widget values (in ``ParamPanel.inputs`` order) -> GenerationRequest keyword arguments."""
    kwargs = FIELDS.from_values(PARAM_FIELDS, values[: len(PARAM_FIELDS)])
    for extra in values[len(PARAM_FIELDS) :]:  # the refiner's State (None from an API call: the defaults)
        kwargs.update(extra or {})
    return kwargs


def refiner_kwargs(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """The refiner accordion's values as request kwargs ("None": no refiner)."""
    kwargs = FIELDS.from_values(REFINER_FIELDS, values)
    if kwargs["refiner_checkpoint"] in (None, "", NO_REFINER):
        return {}
    return kwargs


def build_prompt_boxes(tab: str) -> PromptBoxes:
    prompt = field_widgets.build("prompt", tab, placeholder="Prompt (press Ctrl+Enter to generate)")
    counter = gr.HTML("", elem_id=f"{tab}_token_counter", elem_classes=["easel-token-counter"])
    negative = field_widgets.build("negative_prompt", tab, placeholder="Negative prompt")
    negative_counter = gr.HTML("", elem_id=f"{tab}_negative_token_counter", elem_classes=["easel-token-counter"])
    read_parameters = gr.Button(
        "↙ Read generation parameters from the prompt",
        elem_id=f"{tab}_read_parameters",
        size="sm",
        variant="secondary",
    )
    return PromptBoxes(prompt, negative, read_parameters, (counter, negative_counter))


def build_param_panel(tab: str, default_size: int = 512, checkpoints: list[str] | None = None) -> ParamPanel:
    """Sampler, steps, CFG, size, batch and seed controls, A1111's ranges and defaults; with ``checkpoints``, the
    refiner accordion (A1111 1.6: another checkpoint finishes the picture)."""
    build = field_widgets.build
    with gr.Row():
        sampler = build("sampler", tab)
        schedule = build("schedule_type", tab)
        steps = build("steps", tab)
    with gr.Row():
        with gr.Column(scale=3):
            width = build("width", tab, value=default_size)
            height = build("height", tab, value=default_size)
        with gr.Column(scale=1):
            batch_count = build("batch_count", tab)
            batch_size = build("batch_size", tab)
    cfg = build("cfg_scale", tab)
    with gr.Row(equal_height=True):
        seed = build("seed", tab, scale=4)
        random_seed = gr.Button("⚄", elem_id=f"{tab}_random_seed", scale=0, min_width=48)
        reuse_seed = gr.Button("♻", elem_id=f"{tab}_reuse_seed", scale=0, min_width=48)
    with gr.Accordion("Advanced", open=False):
        clip_skip = build("clip_skip", tab)
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    panel = ParamPanel(
        sampler, schedule, steps, cfg, width, height, batch_count, batch_size, seed, clip_skip, random_seed, reuse_seed
    )
    if checkpoints is not None:
        with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner_accordion"), gr.Row():
            panel.refiner["refiner_checkpoint"] = build(
                "refiner_checkpoint", tab, choices=[NO_REFINER, *checkpoints], value=NO_REFINER
            )
            panel.refiner["refiner_switch_at"] = build("refiner_switch_at", tab)
        panel.refiner_state = gr.State({})
        widgets = [panel.refiner[name] for name in REFINER_FIELDS]

        def collect(*values: Any) -> dict[str, Any]:  # Gradio passes each widget's value as its own argument
            return refiner_kwargs(values)

        derive(collect, widgets, panel.refiner_state)
    return panel


SEND_TARGETS = {"img2img": "img2img", "inpaint": "inpaint"}
"""Tabs a gallery image can be sent to (tab id -> button label); app.py wires the buttons."""


@dataclass
class OutputPanel:
    """Gallery, live preview, progress and the selected image's infotext."""

    gallery: gr.Gallery
    preview: gr.Image
    progress: gr.HTML
    infotext: gr.Textbox
    result_state: gr.State
    send_buttons: dict[str, gr.Button] = field(default_factory=dict)  # target tab id -> "Send to ..." button

    def outputs(self) -> list[gr.components.Component]:
        return [self.gallery, self.preview, self.progress, self.infotext, self.result_state]


def build_output_panel(tab: str) -> OutputPanel:
    progress = gr.HTML("", elem_id=f"{tab}_progress")
    preview = gr.Image(
        label="Live preview", visible=False, interactive=False, format="png", elem_id=f"{tab}_preview", height=320
    )
    gallery = gr.Gallery(
        label="Output",
        format="png",
        columns=4,
        height=480,
        elem_id=f"{tab}_gallery",
        interactive=False,
        object_fit="contain",  # show the whole picture, whatever its aspect
    )
    with gr.Row(elem_classes=["easel-send-row"]):
        send_buttons = {
            target: gr.Button(f"Send to {label}", elem_id=f"{tab}_send_to_{target}", size="sm")
            for target, label in SEND_TARGETS.items()
        }
    infotext = gr.Textbox(
        label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab}_info", buttons=["copy"]
    )
    state = gr.State({"seeds": [], "infotexts": []})
    gallery.select(_show_selected, [state], [infotext, state], api_visibility="private", queue=False)
    return OutputPanel(gallery, preview, progress, infotext, state, send_buttons)


def _show_selected(state: dict, evt: gr.SelectData) -> tuple[str, dict]:
    texts = state.get("infotexts", [])
    index = evt.index if isinstance(evt.index, int) and evt.index < len(texts) else 0
    return (texts[index] if texts else ""), {**state, "selected": index}


def selected_seed(state: dict) -> int:
    """The seed of the image selected in the gallery (the first one if none was clicked), or -1."""
    seeds = state.get("seeds", []) if state else []
    index = state.get("selected", 0) if state else 0
    return seeds[index] if index < len(seeds) else -1
