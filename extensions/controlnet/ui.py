"""The ControlNet accordion of a generation tab: one sub-tab per unit, its widgets folded into one unit dict.

Each unit's value is a hidden ``gr.JSON`` holding the same dict an API client sends (the image as base64), rebuilt
whenever one of the unit's widgets changes; the extensions UI collects those values into the tab's request.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.extensions.context import AccordionParts

from . import annotators, masking, preprocessors
from .control import ControlNetRuntime, list_models
from .control_types import ALL, control_types, union_type
from .units import CONTROL_MODES, HR_OPTIONS, RESIZE_MODES, load_image, load_mask

NO_MODEL = "None"


def _model_choices(runtime: ControlNetRuntime) -> list[str]:
    return [NO_MODEL, *(m.name for m in list_models(runtime.folders()))]


def _type_choices(runtime: ControlNetRuntime) -> list[str]:
    return list(control_types([m.name for m in list_models(runtime.folders())]))


def _module_choices() -> list[str]:
    """The weight-free preprocessors, then the annotators whose weights are in models/annotators/ now."""
    return [*preprocessors.PREPROCESSORS, *annotators.LIBRARY.available()]


def _unit(tab: str, index: int, runtime: ControlNetRuntime) -> tuple[gr.JSON, dict[str, Any], tuple[Any, ...]]:
    elem = f"{tab}_controlnet_unit{index}"
    with gr.Row():
        image = gr.Image(
            label="Control image" + (" (empty: the tab's input image)" if tab != "txt2img" else ""),
            type="pil",
            sources=["upload", "clipboard"],
            elem_id=f"{elem}_image",
            height=256,
        )
        mask = gr.Image(
            label="Inpaint mask",  # white: the area to repaint, as A1111 reads uploaded masks
            type="pil",
            image_mode="L",
            sources=["upload", "clipboard"],
            elem_id=f"{elem}_mask",
            height=256,
        )
        preview = gr.Image(label="Preprocessed map", interactive=False, elem_id=f"{elem}_preview", height=256)
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{elem}_enabled")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{elem}_pixel_perfect")
    control_type = gr.Radio(
        _type_choices(runtime),
        value=ALL,
        label="Control Type",
        info="narrows the lists below; for a ControlNet-Union model it is the kind of map",
        elem_id=f"{elem}_control_type",
    )
    with gr.Row():
        module = gr.Dropdown(_module_choices(), value="none", label="Preprocessor", elem_id=f"{elem}_module")
        model = gr.Dropdown(_model_choices(runtime), value=NO_MODEL, label="Model", elem_id=f"{elem}_model", scale=2)
        refresh = gr.Button("↻", elem_id=f"{elem}_refresh", scale=0, min_width=40)
        run_preview = gr.Button("Preview the map", elem_id=f"{elem}_run_preview", scale=0)
    with gr.Row():
        weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight", elem_id=f"{elem}_weight")
        start = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{elem}_start")
        end = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{elem}_end")
    with gr.Row():
        resolution = gr.Slider(
            64, 2048, value=512, step=8, label="Preprocessor Resolution", elem_id=f"{elem}_res", visible=False
        )  # shown for the preprocessors that take one (not the default "none")
        threshold_a = gr.Slider(1, 255, value=100, step=1, label="Low Threshold", elem_id=f"{elem}_threshold_a")
        threshold_b = gr.Slider(1, 255, value=200, step=1, label="High Threshold", elem_id=f"{elem}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode", elem_id=f"{elem}_mode")
    resize_mode = gr.Radio(
        list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize Mode", elem_id=f"{elem}_resize_mode"
    )
    hr_option = gr.Radio(  # which pass of the hires fix the unit guides: only txt2img has one
        list(HR_OPTIONS), value=HR_OPTIONS[0], label="Hires fix", elem_id=f"{elem}_hr_option", visible=tab == "txt2img"
    )
    widgets = [
        enabled,
        image,
        mask,
        module,
        model,
        weight,
        start,
        end,
        control_mode,
        resize_mode,
        pixel_perfect,
        resolution,
        threshold_a,
        threshold_b,
        hr_option,
        control_type,
    ]
    keys = [
        "enabled",
        "image",
        "mask",
        "module",
        "model",
        "weight",
        "guidance_start",
        "guidance_end",
        "control_mode",
        "resize_mode",
        "pixel_perfect",
        "processor_res",
        "threshold_a",
        "threshold_b",
        "hr_option",
        "union_control_type",
    ]
    state = gr.JSON({}, visible=False, elem_id=f"{elem}_value")

    def unit_value(*values: Any) -> dict[str, Any]:
        unit = dict(zip(keys, values, strict=True))
        if not unit["enabled"]:
            return {}
        unit["union_control_type"] = union_type(unit["union_control_type"])  # the radio's title -> union type
        for key, mode in (("image", "RGB"), ("mask", "L")):
            picture = unit.pop(key)
            if picture is not None:  # as an API client sends it: the value is plain JSON, whatever holds it
                buffer = io.BytesIO()
                picture.convert(mode).save(buffer, format="PNG")
                unit[key] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return unit

    def sliders(name: str, defaults: bool = False) -> tuple[Any, Any, Any]:
        """The threshold sliders as the preprocessor names them (hidden when it has none), and its resolution's;
        ``defaults``: also its default values (when the user picks it, not when an infotext pastes its own)."""
        try:
            pre = preprocessors.find(name)
        except EaselError:  # a pasted name this server lacks: generating says so
            pre = None
        found = pre.sliders if pre is not None else ()
        updates = []
        for i in range(2):
            if i < len(found):
                s = found[i]
                value = {"value": s.value} if defaults else {}
                updates.append(
                    gr.update(visible=True, label=s.name, minimum=s.min, maximum=s.max, step=s.step, **value)
                )
            else:
                updates.append(gr.update(visible=False))
        return updates[0], updates[1], gr.update(visible=pre.resolution if pre is not None else True)

    private = {"queue": False, "api_visibility": "private"}
    module.change(sliders, module, [threshold_a, threshold_b, resolution], **private)
    module.input(lambda name: sliders(name, True), module, [threshold_a, threshold_b, resolution], **private)

    def narrow(title: str) -> tuple[Any, Any]:
        """The preprocessors and models of one control type, its defaults picked (as sd-webui-controlnet's radio)."""
        group = control_types([m.name for m in list_models(runtime.folders())]).get(title)
        if group is None:  # an annotator group whose weights went away meanwhile
            group = control_types([m.name for m in list_models(runtime.folders())])[ALL]
        return (
            gr.update(choices=group["module_list"], value=group["default_option"]),
            gr.update(choices=group["model_list"], value=group["default_model"]),
        )

    control_type.input(narrow, control_type, [module, model], **private)
    refresh.click(
        lambda: (
            gr.update(choices=_model_choices(runtime)),
            gr.update(choices=_module_choices()),
            gr.update(choices=_type_choices(runtime), value=ALL),
        ),
        None,
        [model, module, control_type],
        queue=False,
        api_visibility="private",
    )

    def show_map(picture: Any, painted: Any, name: str, res: float, a: float, b: float) -> Any:
        try:
            source = load_image(picture, "Control image")
            if source is None:
                raise EaselError("Upload a control image first.")
            detected = preprocessors.run(name, source, int(res), a, b, load_mask({"mask": painted}, "Mask"))
            return masking.preview(detected)
        except EaselError as exc:
            raise gr.Error(str(exc)) from None

    run_preview.click(
        show_map, [image, mask, module, resolution, threshold_a, threshold_b], preview, api_visibility="private"
    )
    unwritten = ("image", "mask", "union_control_type")  # never in an infotext
    paste = {f"ControlNet {index} {key}": w for key, w in zip(keys, widgets, strict=True) if key not in unwritten}
    return state, paste, (unit_value, widgets, state)  # the unit's value, kept by the extensions UI


def build_accordion(tab: str, runtime: ControlNetRuntime) -> AccordionParts:
    """Inside the accordion the extensions UI opens: a sub-tab per unit; ``{unit_i: its value}`` for the request,
    and each unit's widgets under sd-webui-controlnet's infotext keys (``ControlNet 0 weight``) for pasting."""
    states: dict[str, Any] = {}
    paste: dict[str, Any] = {}
    derived: list[tuple[Any, ...]] = []
    with gr.Tabs(elem_id=f"{tab}_controlnet_units"):
        for i in range(runtime.unit_count):
            with gr.Tab(f"ControlNet Unit {i}", elem_id=f"{tab}_controlnet_unit{i}_tab"):
                states[f"unit_{i}"], widgets, value = _unit(tab, i, runtime)
                paste.update(widgets)
                derived.append(value)
    return AccordionParts(states, paste, derived)
