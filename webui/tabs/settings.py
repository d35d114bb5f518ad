"""The Settings tab: run-time options of the engine."""

from __future__ import annotations

import gradio as gr

from webui.context import AppContext


def build_settings_tab(ctx: AppContext) -> None:
    settings = ctx.engine.settings
    manager = ctx.engine.manager
    preview = gr.Slider(
        0,
        20,
        value=settings.preview_every,
        step=1,
        label="Live preview every N steps (0 = off)",
        elem_id="settings_preview_every",
    )
    save = gr.Checkbox(
        value=settings.save_outputs,
        label="Save every generated image to the outputs folder",
        elem_id="settings_save_outputs",
    )
    cache = gr.Number(
        value=manager.ram_cache_size or 0,
        precision=0,
        minimum=0,
        label="Checkpoints kept in RAM after switching away (0 = as many as fit in half the free RAM)",
        elem_id="settings_ram_cache",
    )
    status = gr.Markdown("")
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")

    def apply_settings(every: float, save_outputs: bool, ram_cache: float) -> str:
        settings.preview_every = int(every)
        settings.save_outputs = bool(save_outputs)
        manager.ram_cache_size = int(ram_cache) or None
        return "Settings applied."

    apply.click(apply_settings, [preview, save, cache], status, api_visibility="private", queue=False)
    gr.Markdown(
        f"Checkpoints: `{manager.checkpoints_dir}` · Outputs: `{ctx.engine.outputs_dir}` · "
        f"Device: `{manager.device}` · dtype: `{str(manager.dtype).removeprefix('torch.')}`"
    )
