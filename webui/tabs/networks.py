"""Extra networks, styles and the VAE picker: what a generation tab adds to a checkpoint, as widgets.

Click a LoRA or an embedding to put it in the tab's prompt; pick styles; save the prompts as a style; choose the
global VAE. Listing is ``pipelines.networks.library``, applying them is the engine's; nothing here generates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.conditioning.styles import PromptStyle
from pipelines.errors import EaselError
from pipelines.networks.vae import AUTOMATIC
from pipelines.settings import apply_settings
from webui.components import PromptBoxes
from webui.context import AppContext
from webui.derived import derive

AUTOMATIC_VAE = AUTOMATIC
LORA_MULTIPLIER = 1  # A1111's extra_networks_default_multiplier


def lora_tag(name: str) -> str:
    return f"<lora:{name}:{LORA_MULTIPLIER}>"


def toggle_in_prompt(prompt: str, text: str) -> str:
    """Append ``text`` after a space; if the prompt already holds it as a whole word, take it out (A1111's click)."""
    prompt = prompt or ""
    present = re.compile(r"[ ,]*(?<![\w\-.:])" + re.escape(text) + r"(?![\w\-.:])")
    if present.search(prompt):
        return present.sub("", prompt, count=1).strip().lstrip(",").lstrip()
    return f"{prompt.rstrip()} {text}".lstrip() if prompt.strip() else text


def style_names(ctx: AppContext) -> list[str]:
    try:
        return ctx.engine.styles.names()
    except EaselError:  # an unreadable styles.csv: no styles to offer, the rest of the UI still works
        return []


def styles_problem(ctx: AppContext) -> str:
    """Why styles.csv was skipped, shown under the styles picker and in the networks note ("" when it is fine)."""
    problem = ctx.engine.styles.problem()
    return f"⚠️ {problem}" if problem else ""


def vae_choices(ctx: AppContext) -> list[str]:
    return [AUTOMATIC_VAE, *ctx.engine.networks.vae_files()]


def _samples(names: list[str]) -> list[list[str]]:
    return [[name] for name in names]


def _folders_note(ctx: AppContext) -> str:
    folders = ctx.engine.networks.folders
    loras, embeddings = ctx.engine.networks.lora_files(), ctx.engine.networks.embedding_files()
    note = (
        f"LoRA: {len(loras)} in `{folders.lora}` · embeddings: {len(embeddings)} in `{folders.embeddings}` · "
        f"styles in `{folders.styles}`. Click one to add it to the prompt, again to take it out."
    )
    problem = styles_problem(ctx)
    return f"{note}\n\n{problem}" if problem else note


@dataclass
class NetworksPanel:
    styles: gr.Dropdown
    state: gr.State  # {"styles": (...)} as GenerationRequest kwargs: a State keeps the API's positional signature


def build_style_picker(ctx: AppContext, tab: str) -> gr.Dropdown:
    """The styles multiselect, for the column beside the prompts (as A1111 places it)."""
    return gr.Dropdown(
        style_names(ctx),
        value=[],
        multiselect=True,
        label="Styles",
        info=styles_problem(ctx) or None,
        elem_id=f"{tab}_styles",
        interactive=True,
    )


def build_networks_panel(ctx: AppContext, tab: str, prompts: PromptBoxes, styles: gr.Dropdown) -> NetworksPanel:
    """The "Extra networks" accordion of one tab, wired to its prompt box and its styles picker."""
    networks = ctx.engine.networks
    with gr.Accordion("Extra networks & styles", open=False, elem_id=f"{tab}_networks_accordion"):
        with gr.Row():
            loras = gr.Dataset(
                components=["textbox"],
                samples=_samples(list(networks.lora_files())),
                label="LoRA",
                samples_per_page=48,
                elem_id=f"{tab}_lora_cards",
                elem_classes=["easel-network-cards"],
            )
            embeddings = gr.Dataset(
                components=["textbox"],
                samples=_samples(list(networks.embedding_files())),
                label="Textual inversion",
                samples_per_page=48,
                elem_id=f"{tab}_embedding_cards",
                elem_classes=["easel-network-cards"],
            )
        with gr.Row(elem_classes=["easel-networks-row"]):
            note = gr.Markdown(_folders_note(ctx), elem_id=f"{tab}_networks_note", elem_classes=["easel-note"])
            refresh = gr.Button("↻ Refresh", elem_id=f"{tab}_networks_refresh", size="sm", scale=0, min_width=110)
        with gr.Row(elem_classes=["easel-networks-row"]):
            style_name = gr.Textbox(
                label="New style name",
                show_label=False,
                placeholder="Name a new style made of the prompts above",
                elem_id=f"{tab}_style_name",
                scale=4,
            )
            save_style = gr.Button("Save style", elem_id=f"{tab}_save_style", size="sm", scale=0, min_width=120)
    state = gr.State({"styles": ()})

    def add_lora(row: list[Any], prompt: str) -> str:
        return toggle_in_prompt(prompt, lora_tag(str(row[0])))

    def add_embedding(row: list[Any], prompt: str) -> str:
        return toggle_in_prompt(prompt, str(row[0]))

    def rescan(picked: list[str] | None):
        names = style_names(ctx)
        return (
            gr.Dataset(samples=_samples(list(networks.lora_files()))),
            gr.Dataset(samples=_samples(list(networks.embedding_files()))),
            _folders_note(ctx),
            gr.update(choices=names, value=[n for n in picked or [] if n in names], info=styles_problem(ctx)),
        )

    def save(name: str, prompt: str, negative: str, picked: list[str] | None):
        name = (name or "").strip()
        try:
            ctx.engine.styles.save(PromptStyle(name, prompt or "", negative or ""))
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Saved style '{name}'")
        return "", gr.update(choices=style_names(ctx), value=list(picked or []))

    private = {"api_visibility": "private", "queue": False}
    loras.click(add_lora, [loras, prompts.prompt], prompts.prompt, **private)
    embeddings.click(add_embedding, [embeddings, prompts.prompt], prompts.prompt, **private)
    refresh.click(rescan, [styles], [loras, embeddings, note, styles], **private)
    save_style.click(
        save, [style_name, prompts.prompt, prompts.negative_prompt, styles], [style_name, styles], **private
    )
    derive(lambda picked: {"styles": tuple(picked or ())}, [styles], state)
    return NetworksPanel(styles, state)


def current_vae(ctx: AppContext) -> str:
    """The global VAE choice as the picker shows it (the settings keep None for Automatic)."""
    return ctx.engine.settings.sd_vae or AUTOMATIC_VAE


def build_vae_picker(ctx: AppContext) -> gr.Dropdown:
    """A1111's "SD VAE": one global choice, used by every request that names no VAE of its own."""
    return gr.Dropdown(
        vae_choices(ctx),
        value=current_vae(ctx),
        label="SD VAE",
        elem_id="easel_vae",
        scale=2,
        interactive=True,
    )


def wire_vae_picker(app: gr.Blocks, ctx: AppContext, vae: gr.Dropdown, refresh: gr.Button) -> None:
    def choose(name: str | None) -> None:
        try:
            apply_settings(ctx.engine, {"sd_vae": name})  # the same check and "Automatic" rule as POST /options
            ctx.save_settings()  # config.json: the VAE is back after a restart
        except EaselError as exc:  # a file removed since the list was shown
            raise gr.Error(str(exc)) from exc

    def current() -> dict[str, Any]:
        return gr.update(choices=vae_choices(ctx), value=current_vae(ctx))

    private = {"api_visibility": "private", "queue": False}
    vae.change(choose, vae, None, **private)
    refresh.click(current, None, vae, **private)  # the checkpoint ↻ rescans the VAE folder too
    app.load(current, None, vae, **private)  # a reload shows the server's choice, made in any browser
