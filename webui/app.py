"""build_app(ctx) -> gr.Blocks, and launching it."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import NO_REFINER
from webui.context import AppContext
from webui.derived import collecting
from webui.extensions_ui import build_extension_tabs
from webui.image_inputs import wire_send_buttons
from webui.prompt_tools import wire_prompt_tools
from webui.queue_panel import build_queue_panel
from webui.tabs.extensions import build_extensions_tab
from webui.tabs.extras import build_extras_tab
from webui.tabs.history import build_history_tab
from webui.tabs.img2img import build_img2img_tab
from webui.tabs.inpaint import build_inpaint_tab
from webui.tabs.networks import build_vae_picker, wire_vae_picker
from webui.tabs.png_info import build_png_info_tab
from webui.tabs.settings import build_settings_tab
from webui.tabs.txt2img import build_txt2img_tab
from webui.ui_defaults import apply_ui_defaults, tab_defaults

CSS = (Path(__file__).parent / "style.css").read_text()
SHORTCUTS_JS = (Path(__file__).parent / "shortcuts.js").read_text()


def demo_banner(ctx: AppContext) -> str:
    if not ctx.demo_active():
        return ""
    folder = ctx.engine.manager.checkpoints_dir
    return (
        "⚠️ **Demo model with random weights: it makes noise, not pictures.** "
        f"Copy a Stable Diffusion checkpoint (`.safetensors`, SD 1.x, 2.x or SDXL) into `{folder}/` "
        "and press ↻, then pick it above."
    )


def skipped_banner(ctx: AppContext) -> str:
    """Checkpoints start-up could not load and passed over, with why (until one of them is loaded after all)."""
    active = ctx.active_name()
    lines = [
        f"⚠️ **Skipped `{name}`**: it could not be loaded ({reason}). Fix or remove the file and press ↻."
        for name, reason in ctx.skipped_checkpoints.items()
        if name != active
    ]
    if lines and active is None:
        lines.append("No checkpoint could be loaded: copy a working one into the checkpoints folder.")
    return "\n\n".join(lines)


def settings_banner(ctx: AppContext) -> str:
    """Start-up's notes on the settings: a corrupt or unreadable config.json, the remembered checkpoint gone."""
    ui_problems = tab_defaults(ctx.settings.ui)[1]
    return "\n\n".join(f"⚠️ {text}" for text in [*ctx.settings.warnings, *ui_problems, *ctx.startup_notes])


def banner_text(ctx: AppContext) -> str:
    """What the banner under the checkpoint picker says: the demo model's warning and checkpoints skipped at start."""
    parts = (settings_banner(ctx), skipped_banner(ctx), demo_banner(ctx))
    return "\n\n".join(part for part in parts if part)


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole UI over one engine. No generation logic lives here."""
    with gr.Blocks(title="Easel", analytics_enabled=False) as app:
        with gr.Row(elem_id="easel_top"):
            checkpoint = gr.Dropdown(
                ctx.checkpoint_names(),
                value=ctx.active_name(),
                label="Stable Diffusion checkpoint",
                elem_id="easel_checkpoint",
                scale=4,
                interactive=True,
                allow_custom_value=True,
            )
            refresh = gr.Button("↻", elem_id="easel_refresh", scale=0, min_width=48)
            vae = build_vae_picker(ctx)
            model_status = gr.Markdown(_model_status(ctx), elem_id="easel_model_status")
        banner = gr.Markdown(banner_text(ctx), elem_id="easel_demo_banner")
        build_queue_panel(ctx)  # every job in line, above every tab
        with gr.Tabs() as tabs:
            # each tab's derived States (webui/derived.py), recomputed by its Generate before it runs
            with gr.Tab("txt2img", id="txt2img"), collecting() as derived:
                txt2img_output = build_txt2img_tab(ctx, checkpoint, derived)
            with gr.Tab("img2img", id="img2img"), collecting() as derived:
                img2img = build_img2img_tab(ctx, checkpoint, derived)
            with gr.Tab("Inpaint", id="inpaint"), collecting() as derived:
                inpaint = build_inpaint_tab(ctx, checkpoint, derived)
            with gr.Tab("Extras", id="extras"):
                extras = build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="png_info"):
                build_png_info_tab()
            with gr.Tab("History", id="history") as history_tab:
                build_history_tab(ctx, history_tab)
            with gr.Tab("Settings", id="settings"):
                build_settings_tab(ctx, app)
            with gr.Tab("Extensions", id="extensions"):
                build_extensions_tab(ctx)
            build_extension_tabs(ctx)  # each extension's own tabs, after Easel's
        panels = [txt2img_output, img2img.output, inpaint.output, extras]
        wire_send_buttons(tabs, panels, img2img.init_image, inpaint.editor)
        wire_vae_picker(app, ctx, vae, refresh)
        wire_prompt_tools(app, ctx, tabs, checkpoint)  # token counters, ↙ read parameters, PNG Info "Send to"
        apply_ui_defaults(app, ctx.settings.ui, ctx.engine.settings.clip_skip)  # ui-config.json: before the config

        def switch(name: str | None):
            if not name or name == ctx.active_name():  # e.g. a page load showing the model already active
                return _model_status(ctx), banner_text(ctx)
            try:
                ctx.engine.switch_checkpoint(name)
                ctx.save_settings()  # the checkpoint is back after a restart
            except EaselError as exc:
                raise gr.Error(str(exc)) from exc
            return _model_status(ctx), banner_text(ctx)

        def rescan():
            names = [c.name for c in ctx.engine.manager.refresh()]
            if not names:
                gr.Warning(f"No checkpoint found in {ctx.engine.manager.checkpoints_dir}")
            refiners = [gr.update(choices=[NO_REFINER, *names]) for _ in ctx.checkpoint_lists]
            return gr.update(choices=names, value=ctx.active_name()), *refiners

        def current():
            """On page load: the checkpoint active now (another user or an API client may have switched it)."""
            names = ctx.checkpoint_names()
            return gr.update(choices=names, value=ctx.active_name()), _model_status(ctx), banner_text(ctx)

        checkpoint.change(
            switch,
            checkpoint,
            [model_status, banner],
            api_name="switch_checkpoint",
            concurrency_limit=1,
            concurrency_id="device",
        )
        refresh.click(rescan, None, [checkpoint, *ctx.checkpoint_lists], api_name="refresh_checkpoints", queue=False)
        app.load(current, None, [checkpoint, model_status, banner], api_visibility="private", queue=False)
    return app


def _model_status(ctx: AppContext) -> str:
    from pipelines.models.architecture import FAMILY_LABELS

    active = ctx.engine.manager.active
    if active is None:
        return "No checkpoint loaded"
    label = FAMILY_LABELS.get(active.family, active.family)
    hash_text = f" · `{active.hash}`" if active.hash else ""
    plan = ctx.engine.manager.memory.last_plan  # the memory mode, with why as its tooltip
    mode = f' · <abbr title="{html.escape(plan.reason)}">{plan.describe()}</abbr>' if plan is not None else ""
    return f"{label}{hash_text} · {ctx.engine.manager.device.type}{mode}"
