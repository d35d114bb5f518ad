"""The Settings tab: run-time options of the engine, written through ``pipelines.settings`` (checked there)."""

from __future__ import annotations

import gradio as gr

from pipelines.errors import EaselError
from pipelines.settings import PREVIEW_EVERY_MAX, RAM_CACHE_MAX, apply_settings, current_settings
from webui.context import AppContext


def build_settings_tab(ctx: AppContext) -> None:
    values = current_settings(ctx.engine)
    manager = ctx.engine.manager
    preview = gr.Slider(
        0,
        PREVIEW_EVERY_MAX,
        value=values["preview_every"],
        step=1,
        label="Live preview every N steps (0 = off)",
        elem_id="settings_preview_every",
    )
    save = gr.Checkbox(
        value=values["save_outputs"],
        label="Save every generated image to the outputs folder",
        elem_id="settings_save_outputs",
    )
    cache = gr.Number(
        value=values["ram_cache_size"] or 0,
        precision=0,
        minimum=0,
        maximum=RAM_CACHE_MAX,
        label="Checkpoints kept in RAM after switching away (0 = as many as fit in half the free RAM)",
        elem_id="settings_ram_cache",
    )
    status = gr.Markdown("")
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")

    def apply_changes(every: float, save_outputs: bool, ram_cache: float | None) -> str:
        changes = {"preview_every": every, "save_outputs": bool(save_outputs), "ram_cache_size": ram_cache}
        try:
            apply_settings(ctx.engine, changes)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        return "Settings applied."

    apply.click(apply_changes, [preview, save, cache], status, api_visibility="private", queue=False)
    gr.Markdown(
        f"Checkpoints: `{manager.checkpoints_dir}` · Outputs: `{ctx.engine.outputs_dir}` · "
        f"Device: `{manager.device}` · dtype: `{str(manager.dtype).removeprefix('torch.')}`"
    )
