"""The extensions' UI contributions: accordions and the "Script" dropdown in the generation tabs, their own tabs,
and their REST routes. UI plumbing only; what an extension does happens in its hooks.

The values of an extension's widgets and of the selected script travel to a tab's handler in one ``gr.State``
appended after the tab's other inputs: a State is no parameter of the Gradio API, so the positional signatures
of ``/txt2img``, ``/img2img`` and ``/inpaint`` stay what old clients call. A contribution whose builder raises
is left out and its extension marked with the error (the Extensions tab shows it); the rest of the UI is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from pipelines.extensions.context import AccordionParts
from pipelines.extensions.loader import ExtensionRecord
from pipelines.fields import FIELDS
from pipelines.hooks import Script
from webui import field_widgets
from webui.context import AppContext
from webui.derived import derive

log = logging.getLogger(__name__)
NO_SCRIPT = "None"
SCRIPT_TABS = ("txt2img", "img2img")  # A1111's tabs with a Script dropdown (Easel's inpaint is A1111's img2img)


def _running(ctx: AppContext) -> list[ExtensionRecord]:
    return ctx.extensions.running() if ctx.extensions is not None else []


def _failed(record: ExtensionRecord, where: str, exc: Exception) -> None:
    log.exception("extension %s: %s failed", record.name, where)
    record.error = f"{where} failed: {type(exc).__name__}: {exc}"


@dataclass
class ExtensionInputs:
    """One tab's extension widgets and their values as GenerationRequest keyword arguments (in ``state``)."""

    state: gr.State
    fields: dict[tuple[str, str], gr.components.Component] = field(default_factory=dict)  # (owner, field) -> widget
    script: gr.Dropdown | None = None
    script_args: dict[str, list[gr.components.Component]] = field(default_factory=dict)  # title -> its widgets


def request_kwargs(value: dict[str, Any] | None) -> dict[str, Any]:
    """The State's value as GenerationRequest keyword arguments (empty: no extension has anything to say)."""
    value = value or {}
    kwargs: dict[str, Any] = {}
    if value.get("extensions"):
        kwargs["extensions"] = value["extensions"]
    if value.get("script"):
        kwargs["script"] = value["script"]
        kwargs["script_args"] = tuple(value.get("script_args", ()))
    return kwargs


def _script_widgets(script: Script, tab: str) -> list[gr.components.Component]:
    if script.ui is not None:
        return list(script.ui(tab))
    key = script.key.replace(" ", "_").replace("/", "")
    build = field_widgets.from_widget
    return [build(arg.widget, arg.default, f"{tab}_script_{key}_{i}") for i, arg in enumerate(script.args)]


def build_extension_inputs(ctx: AppContext, tab: str) -> ExtensionInputs:
    """The accordions of the extensions that named ``tab`` and, in txt2img/img2img, the Script dropdown."""
    inputs = ExtensionInputs(gr.State({}))
    for record in _running(ctx):
        assert record.contributions is not None
        for accordion in record.contributions.accordions:
            if tab not in accordion.tabs:
                continue
            try:
                with gr.Accordion(accordion.title, open=False, elem_id=f"{tab}_{record.name}_accordion"):
                    built = accordion.build(tab) if accordion.build else _field_widgets(record, tab)
            except Exception as exc:
                _failed(record, f"its {tab} accordion", exc)
                continue
            if isinstance(built, AccordionParts):  # widgets an infotext's values are pasted into, by key
                ctx.paste_targets.setdefault(tab, {}).update(built.paste)
                for fn, widgets, value in built.derived:  # recomputed before Generate, as Easel's own
                    derive(fn, widgets, value)
                built = built.fields
            for short, component in built.items():
                if f"{record.name}.{short}" not in FIELDS:  # its value would make every request fail
                    log.error("extension %s: accordion widget %r is no field of it; left out", record.name, short)
                    continue
                inputs.fields[(record.name, short)] = component
    hooks = ctx.engine.hooks
    scripts = hooks.scripts(tab) if tab in SCRIPT_TABS else []
    if scripts:
        inputs.script = gr.Dropdown(
            [NO_SCRIPT, *(s.title for s in scripts)], value=NO_SCRIPT, label="Script", elem_id=f"{tab}_script"
        )
        groups = []
        for script in scripts:
            with gr.Group(visible=False, elem_id=f"{tab}_script_{len(groups)}") as group:
                try:
                    inputs.script_args[script.title] = _script_widgets(script, tab)
                except Exception as exc:
                    log.exception("script %s: its UI failed", script.title)
                    gr.Markdown(f"⚠️ {script.title}: its controls could not be built ({exc})")
                    inputs.script_args[script.title] = []
            groups.append(group)
        titles = [s.title for s in scripts]

        def show(choice: str) -> Any:
            updates = [gr.update(visible=choice == title) for title in titles]
            return updates[0] if len(updates) == 1 else updates  # one output takes one value, not a list

        inputs.script.change(show, inputs.script, groups, queue=False, api_visibility="private")
    _wire_state(inputs)
    return inputs


def _field_widgets(record: ExtensionRecord, tab: str) -> dict[str, gr.components.Component]:
    assert record.contributions is not None
    mode = tab
    return {
        f.name.split(".", 1)[1]: field_widgets.build(f.name, tab)
        for f in record.contributions.fields
        if f.widget is not None and mode in f.modes
    }


def _wire_state(inputs: ExtensionInputs) -> None:
    """Every widget's change recomputes the State from all of them (the values a handler receives)."""
    keys = list(inputs.fields)
    titles = list(inputs.script_args)
    components = [inputs.fields[k] for k in keys]
    if inputs.script is not None:
        components.append(inputs.script)
    for title in titles:
        components.extend(inputs.script_args[title])
    if not components:
        return

    def collect(*values: Any) -> dict[str, Any]:
        extensions: dict[str, dict[str, Any]] = {}
        for (owner, short), value in zip(keys, values[: len(keys)], strict=True):
            extensions.setdefault(owner, {})[short] = value
        rest = list(values[len(keys) :])
        script = None
        script_args: list[Any] = []
        if inputs.script is not None:
            choice = rest.pop(0)
            for title in titles:
                count = len(inputs.script_args[title])
                own, rest = rest[:count], rest[count:]
                if choice == title:
                    script, script_args = title, own
        return {"extensions": extensions, "script": script, "script_args": script_args}

    inputs.state = gr.State(collect(*(c.value for c in components)))
    derive(collect, components, inputs.state)


def build_extension_tabs(ctx: AppContext) -> None:
    """Each running extension's own tabs (call inside ``gr.Tabs``)."""
    for record in _running(ctx):
        assert record.contributions is not None
        for number, tab in enumerate(record.contributions.tabs):
            with gr.Tab(tab.title, id=f"ext_{record.name}_{number}"):
                try:
                    tab.build()
                except Exception as exc:
                    _failed(record, f"its tab {tab.title!r}", exc)
                    gr.Markdown(f"⚠️ The extension **{record.name}** could not build this tab: {exc}")


def mount_extension_routes(app: Any, ctx: AppContext, include: Callable[..., None] | None = None) -> list[str]:
    """Each running extension's routers under ``/<name>`` (before Gradio is mounted at ``/``); the prefixes."""
    mounted = []
    for record in _running(ctx):
        assert record.contributions is not None
        for build in record.contributions.routes:
            try:
                (include or app.include_router)(build(), prefix=f"/{record.name}", tags=[f"extension: {record.name}"])
            except Exception as exc:
                _failed(record, "its routes", exc)
                continue
            mounted.append(f"/{record.name}")
    return mounted
