"""The Settings tab: every engine setting and the tabs' default values, by section, searchable, A1111's keys shown.

Engine settings are written through ``pipelines.settings`` (checked there, all or nothing) and saved to config.json
(``pipelines.settings_store``); the tabs' defaults go to ui-config.json and show after a restart. "Apply" changes
only what was edited here since the tab was shown, so a VAE picked meanwhile at the top is not put back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import MODES
from pipelines.metadata.filenames import TAGS
from pipelines.sampling.rng import SOURCES
from pipelines.settings import (
    CLIP_SKIP_MAX,
    MEMORY_SETTINGS,
    PREVIEW_EVERY_MAX,
    RAM_CACHE_MAX,
    SAMPLING_BOUNDS,
    apply_settings,
    current_settings,
    validated_settings,
)
from pipelines.settings_store import ENGINE_KEYS, SETTING_KEYS, stored_value
from pipelines.upscalers.library import MAX_TILE
from webui import extension_settings, field_widgets
from webui.context import AppContext
from webui.tabs.networks import vae_choices
from webui.ui_defaults import checked_default, default_fields, tab_defaults, ui_key

T = TypeVar("T")
SEARCH_JS = """
(query) => {
  // The box's own value: the event's argument can lag one keystroke behind a pasted or filled text.
  const box = document.querySelector("#settings_search textarea, #settings_search input");
  const text = ((box && box.value) || query || "").toLowerCase().trim();
  const root = document.getElementById("easel_settings");
  if (!root) return query;
  root.querySelectorAll(".easel-setting").forEach((el) => {
    el.style.display = !text || el.innerText.toLowerCase().includes(text) ? "" : "none";
  });
  root.querySelectorAll(".easel-settings-section").forEach((section) => {
    const shown = [...section.querySelectorAll(".easel-setting")].some((el) => el.style.display !== "none");
    section.style.display = shown ? "" : "none";
  });
  return query;
}
"""


@dataclass(frozen=True)
class Setting:
    """One engine setting's widget: its A1111 key, what it does, and how it is edited."""

    key: str
    label: str
    info: str
    kind: str  # slider, number, checkbox, radio, dropdown, textbox
    low: float = 0
    high: float = 1
    step: float = 1
    choices: Callable[[AppContext], list[str]] | None = None


_SAMPLING_LABELS = {
    "eta_ancestral": ("Eta for ancestral samplers", "noise multiplier of Euler a, DPM++ 2S a, DPM++ SDE..."),
    "eta_ddim": ("Eta for DDIM", "0 makes DDIM deterministic"),
    "s_churn": ("sigma churn", "extra noise added per step (Euler, Heun, DPM2)"),
    "s_tmin": ("sigma tmin", "churn only for sigmas above this"),
    "s_tmax": ("sigma tmax", "churn only for sigmas below this (0: no limit)"),
    "s_noise": ("sigma noise", "scale of the noise added each step"),
    "beta_dist_alpha": ("Beta schedule alpha", "the Beta schedule type's alpha"),
    "beta_dist_beta": ("Beta schedule beta", "the Beta schedule type's beta"),
}

SECTIONS: dict[str, list[Setting]] = {
    "Saving images": [
        Setting("samples_save", "Save every generated image", "to the outputs folder", "checkbox"),
        Setting(
            "samples_format",
            "File format",
            "png: infotext in the 'parameters' text chunk; jpg / webp: in the EXIF UserComment, as A1111",
            "radio",
            choices=lambda _ctx: ["png", "jpg", "webp"],
        ),
        Setting("jpeg_quality", "Quality for JPEG and lossy WebP", "1-100", "slider", 1, 100),
        Setting("webp_lossless", "Lossless WebP", "ignores the quality", "checkbox"),
        Setting(
            "samples_filename_pattern",
            "File name pattern",
            "empty: [seed]; files are NNNNN-<pattern>.<format>; tags: " + " ".join(f"[{t}]" for t in TAGS),
            "textbox",
        ),
        Setting("save_to_dirs", "Save into a sub-folder", "one folder per directory pattern (per date)", "checkbox"),
        Setting("directories_filename_pattern", "Sub-folder pattern", "default [date]; same tags", "textbox"),
    ],
    "Sampling": [
        Setting(
            "randn_source",
            "Random number source",
            "NV: the numbers A1111 gets on NVIDIA GPUs, on any device; CPU: as A1111 on CPU; GPU: this device's",
            "radio",
            choices=lambda _ctx: list(SOURCES),
        ),
        Setting(
            "eta_noise_seed_delta", "Eta noise seed delta (ENSD)", "added to the seed of ancestral noise", "number"
        ),
        Setting(
            "CLIP_stop_at_last_layers",
            "Clip skip",
            "for API requests that set none, and the tabs' starting value (after a restart)",
            "slider",
            1,
            CLIP_SKIP_MAX,
        ),
        *[
            Setting(name, *_SAMPLING_LABELS[name], "slider", low, high, 0.01)
            for name, (low, high) in SAMPLING_BOUNDS.items()
        ],
    ],
    "Live preview": [
        Setting(
            "show_progress_every_n_steps",
            "Live preview every N steps",
            "0: no preview (a little faster)",
            "slider",
            0,
            PREVIEW_EVERY_MAX,
        ),
    ],
    "Memory": [
        Setting(
            "sd_checkpoint_cache",
            "Checkpoints kept in RAM after switching away",
            f"0: as many as fit in half the free RAM; at most {RAM_CACHE_MAX}",
            "number",
            0,
            RAM_CACHE_MAX,
        ),
        Setting(
            "memory_mode",
            "GPU memory mode",
            "auto: chosen per picture from free VRAM; high: all resident; medium: one component at a time "
            "(A1111's --medvram); low: block offload (--lowvram). The command line's --memory wins.",
            "radio",
            choices=lambda _ctx: list(MEMORY_SETTINGS["memory_mode"]),
        ),
        Setting(
            "vae_tiling",
            "VAE tiling",
            "auto: when a decode would not fit; on: always; off: never",
            "radio",
            choices=lambda _ctx: list(MEMORY_SETTINGS["vae_tiling"]),
        ),
    ],
    "Upscaling": [
        Setting(
            "ESRGAN_tile",
            "Tile size for model upscalers",
            "in source pixels; 0: the whole image at once (fastest, most memory)",
            "slider",
            0,
            MAX_TILE,
        ),
        Setting(
            "ESRGAN_tile_overlap",
            "Tile overlap for model upscalers",
            "in source pixels; more hides seams better",
            "slider",
            0,
            MAX_TILE // 2,
        ),
    ],
    "Networks": [
        Setting(
            "sd_vae",
            "SD VAE",
            "used by every request that names no VAE (the picker at the top is the same setting)",
            "dropdown",
            choices=vae_choices,
        ),
    ],
}
ALL_SETTINGS = [setting for section in SECTIONS.values() for setting in section]
UI_SECTION = "User interface defaults"


def shown_values(ctx: AppContext) -> dict[str, Any]:
    """Every setting as its widget sends it (A1111's keys), and the tabs' defaults (ui-config.json keys).

    The defaults are engine values: an index radio (masked content...) sends its choice's index.
    """
    values = current_settings(ctx.engine)
    shown = {s.key: stored_value(ENGINE_KEYS[s.key], values[ENGINE_KEYS[s.key]]) for s in ALL_SETTINGS}
    defaults, _problems = tab_defaults(ctx.settings.ui)
    for tab in MODES:
        for field in default_fields(tab):
            key = ui_key(tab, field)
            shown[key] = defaults.get(key, field.default)
    shown.update(extension_settings.shown(ctx))  # config.json's, as the next start will read them
    return shown


def _widget(setting: Setting, ctx: AppContext, value: Any) -> gr.components.Component:
    common: dict[str, Any] = {
        "label": setting.label,
        "info": f"{setting.key} · {setting.info}",
        "elem_id": f"setting_{setting.key}",
        "elem_classes": ["easel-setting"],
        "interactive": True,
    }
    if setting.kind == "slider":
        return gr.Slider(setting.low, setting.high, value=value, step=setting.step, **common)
    if setting.kind == "number":
        return gr.Number(value=value, precision=0, minimum=setting.low, **common)
    if setting.kind == "checkbox":
        return gr.Checkbox(value=bool(value), **common)
    if setting.kind == "textbox":
        return gr.Textbox(value=value or "", max_lines=1, **common)
    assert setting.choices is not None
    if setting.kind == "radio":
        return gr.Radio(setting.choices(ctx), value=value, **common)
    return gr.Dropdown(setting.choices(ctx), value=value, **common)


def _rows(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _describe(value: Any) -> str:
    return "(empty)" if value == "" or value is None else f"{value:g}" if isinstance(value, float) else str(value)


def apply_changes(ctx: AppContext, keys: list[str], baseline: dict[str, Any], values: list[Any]) -> str:
    """Apply what was edited since ``baseline``; a report of what changed, what was saved, what needs a restart."""
    edited = {k: v for k, v in zip(keys, values, strict=True) if baseline.get(k) != v}
    engine_changes = {ENGINE_KEYS[k]: v for k, v in edited.items() if k in ENGINE_KEYS}
    ui_changes: dict[str, Any] = {}
    fields = {ui_key(tab, f): f for tab in MODES for f in default_fields(tab)}
    validated_settings(ctx.engine, engine_changes, SETTING_KEYS)  # every check before anything is applied
    extension_changes = extension_settings.checked_changes(ctx, edited)
    for key, value in edited.items():
        if key in fields:
            ui_changes[key] = field_widgets.widget_value(fields[key], checked_default(fields[key], value))  # as A1111
    if not edited:
        return "Nothing was changed."
    changed = apply_settings(ctx.engine, engine_changes, SETTING_KEYS)
    lines = []
    if changed:
        items = ", ".join(
            f"`{SETTING_KEYS[s]}` {_describe(baseline.get(SETTING_KEYS[s]))} → {_describe(edited[SETTING_KEYS[s]])}"
            for s in changed
        )
        lines.append(f"**Applied** (used from the next image on): {items}.")
    ctx.settings.record(ctx.engine, extension_changes)  # config.json: the engine's settings and the extensions'
    if extension_changes:
        items = ", ".join(f"`{k}` → {_describe(v)}" for k, v in extension_changes.items())
        lines.append(f"**Needs a restart** (extensions read their settings at start; saved to config.json): {items}.")
    if ui_changes:
        ctx.settings.record_ui(ui_changes)
        items = ", ".join(f"`{k}` → {_describe(edited[k])}" for k in ui_changes)
        lines.append(f"**Needs a restart** (the tabs are built at start; saved to ui-config.json): {items}.")
    where = ctx.settings.path
    lines.append(f"Saved to `{where}`." if where else "Not saved to disk: this server has no settings file.")
    return "\n\n".join(lines)


def _notice(ctx: AppContext) -> str:
    problems = ctx.settings.warnings
    where = (
        f"Settings file: `{ctx.settings.path}` · tab defaults: `{ctx.settings.ui_path}`" if ctx.settings.path else ""
    )
    return "\n\n".join([*(f"⚠️ {p}" for p in problems), where])


def build_settings_tab(ctx: AppContext, app: gr.Blocks) -> None:
    manager = ctx.engine.manager
    shown = shown_values(ctx)
    widgets: dict[str, gr.components.Component] = {}
    with gr.Column(elem_id="easel_settings"):
        gr.Markdown(_notice(ctx), elem_id="settings_notice")
        with gr.Row(equal_height=True):
            search = gr.Textbox(
                placeholder="Search settings (name or key, e.g. jpeg or eta)",
                show_label=False,
                elem_id="settings_search",
                scale=4,
            )
            apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply", scale=1)
        status = gr.Markdown("", elem_id="settings_status")
        for title, settings in SECTIONS.items():
            with gr.Group(elem_classes=["easel-settings-section"]):
                gr.Markdown(f"### {title}", elem_classes=["easel-settings-heading"])
                for row in _rows(settings, 2):
                    with gr.Row():
                        for setting in row:
                            widgets[setting.key] = _widget(setting, ctx, shown[setting.key])
        widgets.update(extension_settings.build_sections(ctx))  # ControlNet's unit count...
        defaults, _problems = tab_defaults(ctx.settings.ui)  # engine values (build shows them as the widget does)
        for tab in MODES:
            with gr.Group(elem_classes=["easel-settings-section"]):
                gr.Markdown(f"### {UI_SECTION}: {tab}", elem_classes=["easel-settings-heading"])
                for row in _rows(default_fields(tab), 3):
                    with gr.Row():
                        for field in row:
                            key = ui_key(tab, field)
                            widgets[key] = field_widgets.build(
                                field.name,
                                tab,
                                value=defaults.get(key, field.default),
                                elem_id=f"setting_ui_{tab}_{field.name}",
                                elem_classes=["easel-setting"],
                                info=key,
                            )
        gr.Markdown(
            f"Checkpoints: `{manager.checkpoints_dir}` · Outputs: `{ctx.engine.outputs_dir}` · "
            f"Device: `{manager.device}` · dtype: `{str(manager.dtype).removeprefix('torch.')}`"
        )
    widgets = {"sd_vae": widgets.pop("sd_vae"), **widgets}  # first: its load update also refreshes the choices
    keys = list(widgets)
    baseline = gr.State(shown)

    def on_apply(base: dict[str, Any], *values: Any) -> tuple[str, dict[str, Any]]:
        try:
            report = apply_changes(ctx, keys, base, list(values))
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        return report, shown_values(ctx)

    fields = {ui_key(tab, f): f for tab in MODES for f in default_fields(tab)}

    def on_load() -> list[Any]:
        now = shown_values(ctx)
        updates: list[Any] = [gr.update(choices=vae_choices(ctx), value=now["sd_vae"])]
        updates += [field_widgets.widget_value(fields[k], now[k]) if k in fields else now[k] for k in keys[1:]]
        return [now, *updates]

    private = {"api_visibility": "private", "queue": False}
    apply.click(on_apply, [baseline, *widgets.values()], [status, baseline], **private)
    search.change(None, search, None, js=SEARCH_JS, **private)  # typed, pasted or cleared
    app.load(on_load, None, [baseline, *widgets.values()], **private)  # a reload shows changes made elsewhere
