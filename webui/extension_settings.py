"""The extensions' settings (``ctx.setting``) in the Settings tab: one section each, kept in config.json.

An extension reads its settings once, in ``setup`` (they shape its UI: ControlNet's unit count), so a change here is
saved under the setting's config.json key (A1111's name where there is one, ``control_net_unit_count``) and takes
effect on the next start, which the widget and the Apply report both say, as A1111's "(requires restart)" options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.extensions.context import Setting
from webui.context import AppContext


@dataclass(frozen=True)
class ExtensionSetting:
    extension: str
    setting: Setting

    @property
    def key(self) -> str:
        return self.setting.config_key


def declared(ctx: AppContext) -> list[ExtensionSetting]:
    """Every running extension's settings, in the extensions' order."""
    records = ctx.extensions.running() if ctx.extensions is not None else []
    return [ExtensionSetting(r.name, s) for r in records if r.contributions for s in r.contributions.settings]


def saved_value(ctx: AppContext, item: ExtensionSetting) -> Any:
    """What the next start will read: config.json's value (clamped as the extension will clamp it) or the default."""
    value = ctx.settings.values.get(item.key, item.setting.default)
    try:
        return item.setting.checked(value)
    except EaselError:
        return item.setting.default


def shown(ctx: AppContext) -> dict[str, Any]:
    return {item.key: saved_value(ctx, item) for item in declared(ctx)}


def checked_changes(ctx: AppContext, edited: dict[str, Any]) -> dict[str, Any]:
    """The edited extension settings as they will be saved; EaselError (naming the key) for a wrong type."""
    by_key = {item.key: item for item in declared(ctx)}
    out = {}
    for key, value in edited.items():
        if key in by_key:
            out[key] = by_key[key].setting.checked(value)  # a slider's 5.0 is an int's 5; out of bounds: clamped
    return out


def _widget(item: ExtensionSetting, value: Any) -> gr.components.Component:
    setting = item.setting
    common: dict[str, Any] = {
        "label": setting.label,
        "info": f"{setting.config_key} · saved in config.json, read at start-up",
        "elem_id": f"setting_{setting.config_key}",
        "elem_classes": ["easel-setting"],
        "interactive": True,
    }
    if isinstance(setting.default, bool):
        return gr.Checkbox(value=bool(value), **common)
    if isinstance(setting.default, int | float):
        step = 1 if isinstance(setting.default, int) else 0.01
        if setting.bounds is not None:
            return gr.Slider(setting.bounds[0], setting.bounds[1], value=value, step=step, **common)
        return gr.Number(value=value, precision=0 if step == 1 else None, **common)
    return gr.Textbox(value=str(value), max_lines=1, **common)


def build_sections(ctx: AppContext) -> dict[str, gr.components.Component]:
    """A section per extension section title (``Setting.section``) with its widgets; ``{config key: widget}``."""
    widgets: dict[str, gr.components.Component] = {}
    sections: dict[str, list[ExtensionSetting]] = {}
    for item in declared(ctx):
        sections.setdefault(item.setting.section or item.extension, []).append(item)
    for title, items in sections.items():
        with gr.Group(elem_classes=["easel-settings-section"], elem_id=f"settings_section_{items[0].extension}"):
            gr.Markdown(f"### {title}", elem_classes=["easel-settings-heading"])
            for i in range(0, len(items), 2):
                with gr.Row():
                    for item in items[i : i + 2]:
                        widgets[item.key] = _widget(item, saved_value(ctx, item))
    return widgets
