"""Prompt-side helpers wired once over the whole app: token counters, "read parameters" (↙) and PNG Info's
"Send to txt2img / img2img / inpaint" (and History's, the same buttons over its text and image).

UI plumbing only: infotext -> request fields is ``pipelines.metadata.infotext_request``. Widgets are found by their
``elem_id`` (``<tab>_prompt``, ``<tab>_steps``, ...), the same convention every tab's builders follow, so a tab
that adds a field with a known id gets pasted into without any change here.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import FIELDS, MODES
from pipelines.metadata.infotext import parse_infotext
from pipelines.metadata.infotext_request import request_from_infotext, resolve_checkpoint
from webui.context import AppContext
from webui.field_widgets import widget_value

TABS = MODES
SEND_SOURCES = ("png_info", "history")
"""Tabs with "Send to <tab>" buttons over an infotext and an image: ``<source>_send_<tab>``, ``<source>_text``,
``<source>_image``."""
FIELD_IDS: dict[str, str] = {f.name: f.widget.elem for f in FIELDS.with_widget() if f.widget is not None}
"""request field -> elem_id suffix of the widget showing it (``<tab>_<suffix>``), from the field registry."""


def _by_id(app: gr.Blocks) -> dict[str, Any]:
    return {block.elem_id: block for block in app.blocks.values() if getattr(block, "elem_id", None)}


def token_counter_html(used: int, capacity: int) -> str:
    over = " over" if used > 75 else ""
    title = "tokens used / room in the 75-token chunks so far; longer prompts continue in another chunk"
    return f"<div class='easel-token-counter{over}' title='{html.escape(title)}'>{used}/{capacity}</div>"


def count_tokens(ctx: AppContext, text: str | None, steps: float | None = 20) -> str:
    """The counter for one prompt box; empty when no model is loaded, never an error while the user types."""
    active = ctx.engine.manager.active
    if active is None:
        return ""
    try:
        used, capacity = ctx.engine.prompt_encoder(active).count_tokens(text or "", int(steps or 20))
    except (EaselError, ValueError):
        return ""
    return token_counter_html(used, capacity)


def infotext_updates(
    ctx: AppContext, text: str | None, fields: list[str], require_params: bool = True
) -> tuple[list[Any], Any]:
    """Widget updates (in ``fields`` order) and a checkpoint update for one infotext."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("Nothing to read: paste generation parameters (A1111 infotext) first.")
    parsed_fields = parse_infotext(text)
    if require_params and len(parsed_fields) <= 2:
        raise gr.Error("No generation parameters found: the last line must hold 'Steps: ..., Sampler: ...' pairs.")
    parsed = request_from_infotext(parsed_fields)
    for key, why in parsed.skipped.items():
        gr.Warning(f"'{key}' was not read: {why}")
    if "refiner_checkpoint" in parsed.kwargs:  # "name [hash]" in the text; the dropdown lists this server's files
        refiner = resolve_checkpoint(ctx.engine.manager.find, parsed.kwargs["refiner_checkpoint"], None)
        if refiner is None:
            gr.Warning(f"Refiner '{parsed.kwargs.pop('refiner_checkpoint')}' is not here: no refiner set.")
        else:
            parsed.kwargs["refiner_checkpoint"] = refiner
    updates = [
        gr.update(value=widget_value(FIELDS[name], parsed.kwargs[name])) if name in parsed.kwargs else gr.update()
        for name in fields
    ]
    checkpoint: Any = gr.update()
    if parsed.model_name or parsed.model_hash:
        name = resolve_checkpoint(ctx.engine.manager.find, parsed.model_name, parsed.model_hash)
        if name is None:
            gr.Warning(f"Checkpoint '{parsed.model_name or parsed.model_hash}' is not here: keeping the current one.")
        elif name != (ctx.active_name() or ""):
            checkpoint = gr.update(value=name)
    return updates, checkpoint


def paste_updates(ctx: AppContext, text: str | None, targets: list[tuple[str, Any]]) -> list[Any]:
    """Updates for the extensions' paste widgets (``AccordionParts.paste``) from one infotext, in ``targets`` order.

    The extensions read their own keys (``EngineHooks.read_infotext``); a key the text does not hold leaves its
    widget as it is (as A1111). A dropdown value this server does not list is added to its choices, so a model
    that is not installed keeps its name (its extension warned; generating names it in a clear error).
    """
    if not targets:
        return []
    read = ctx.engine.hooks.read_infotext(parse_infotext((text or "").strip()))
    for warning in read.warnings:
        gr.Warning(warning)
    updates: list[Any] = []
    for key, component in targets:
        if key not in read.values:
            updates.append(gr.update())
            continue
        value = read.values[key]
        choices = [c[1] if isinstance(c, tuple) else c for c in getattr(component, "choices", None) or []]
        if isinstance(component, gr.Dropdown) and value not in choices:
            updates.append(gr.update(value=value, choices=[*choices, value]))
        else:
            updates.append(gr.update(value=value))
    return updates


def wire_prompt_tools(app: gr.Blocks, ctx: AppContext, tabs: gr.Tabs, checkpoint: gr.Dropdown) -> None:
    """Call inside ``with app:`` after every tab is built."""
    widgets = _by_id(app)
    for tab in TABS:
        prompt = widgets.get(f"{tab}_prompt")
        if prompt is None:
            continue
        steps = widgets.get(f"{tab}_steps")
        pairs = ((f"{tab}_prompt", f"{tab}_token_counter"), (f"{tab}_neg_prompt", f"{tab}_negative_token_counter"))
        for box_id, counter_id in pairs:
            box, counter = widgets.get(box_id), widgets.get(counter_id)
            if box is not None and counter is not None:
                inputs = [box, steps] if steps is not None else [box]
                box.change(
                    lambda text, n=20: count_tokens(ctx, text, n),
                    inputs,
                    counter,
                    queue=False,
                    show_progress="hidden",
                    api_visibility="private",
                )
        names = [name for name in FIELD_IDS if f"{tab}_{FIELD_IDS[name]}" in widgets]
        targets = [widgets[f"{tab}_{FIELD_IDS[name]}"] for name in names]
        pasted = list(ctx.paste_targets.get(tab, {}).items())  # the extensions' widgets, by infotext key
        read_button = widgets.get(f"{tab}_read_parameters")
        if read_button is not None:
            read_button.click(
                _reader(ctx, names, pasted),
                [prompt],
                [*targets, checkpoint, *(c for _, c in pasted)],
                queue=False,
                api_visibility="private",
            )
        for origin in SEND_SOURCES:
            send = widgets.get(f"{origin}_send_{tab}")
            text = widgets.get(f"{origin}_text")
            if send is None or text is None:
                continue
            image_target = widgets.get("img2img_image") if tab == "img2img" else widgets.get("inpaint_editor")
            source = widgets.get(f"{origin}_image")
            outputs = [*targets, checkpoint, tabs]
            inputs = [text]
            with_image = tab != "txt2img" and image_target is not None and source is not None
            if with_image:
                outputs.append(image_target)
                inputs.append(source)
            outputs += [c for _, c in pasted]
            sender = _sender(ctx, names, tab if with_image else "txt2img", tab, pasted)
            send.click(sender, inputs, outputs, queue=False, api_visibility="private")
    _wire_send_to_png_info(widgets, tabs)


def _wire_send_to_png_info(widgets: dict[str, Any], tabs: gr.Tabs) -> None:
    """History's "Send to PNG Info": the image goes to PNG Info, whose own change event reads it."""
    button, source, target = (widgets.get(k) for k in ("history_send_png_info", "history_image", "png_info_image"))
    if button is None or source is None or target is None:
        return

    def send(image: Any) -> tuple[Any, Any]:
        if not image:
            raise gr.Error("Click an image first.")
        return image, gr.Tabs(selected="png_info")

    button.click(send, [source], [target, tabs], queue=False, api_visibility="private")


def _reader(ctx: AppContext, names: list[str], pasted: list[tuple[str, Any]]) -> Callable[..., list[Any]]:
    def read(text: str | None) -> list[Any]:
        updates, checkpoint = infotext_updates(ctx, text, names)
        return [*updates, checkpoint, *paste_updates(ctx, text, pasted)]

    return read


def _sender(
    ctx: AppContext, names: list[str], image_kind: str, tab: str, pasted: list[tuple[str, Any]]
) -> Callable[..., list[Any]]:
    """``image_kind``: where the PNG Info image goes too (img2img's image, the inpaint editor), or txt2img: nowhere."""

    def send(text: str | None, image: Any = None) -> list[Any]:
        updates, checkpoint = infotext_updates(ctx, text, names)
        out = [*updates, checkpoint, gr.Tabs(selected=tab)]
        if image_kind == "img2img":
            out.append(gr.update(value=image) if image is not None else gr.update())
        elif image_kind == "inpaint":
            if image is not None:
                out.append(gr.update(value={"background": image, "layers": [], "composite": image}))
            else:
                out.append(gr.update())
        return out + paste_updates(ctx, text, pasted)

    return send
