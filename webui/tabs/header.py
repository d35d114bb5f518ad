"""The top of every generation tab: prompts, Generate/Interrupt/Skip, styles and the extra-networks panel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.components import PromptBoxes, build_prompt_boxes
from webui.context import AppContext
from webui.runner import session_of
from webui.tabs.networks import build_networks_panel, build_style_picker


@dataclass
class TabHeader:
    prompts: PromptBoxes
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    networks: Any  # the networks panel; its ``state`` carries the chosen styles to the handler


def build_generate_column(tab: str) -> tuple[gr.Button, gr.Button, gr.Button]:
    """Generate, Interrupt and Skip, laid out the same on every tab."""
    generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", size="lg")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
        skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
    return generate, interrupt, skip


def build_tab_header(ctx: AppContext, tab: str) -> TabHeader:
    with gr.Row():
        with gr.Column(scale=6):
            prompts = build_prompt_boxes(tab)
        with gr.Column(scale=1, min_width=160):
            generate, interrupt, skip = build_generate_column(tab)
            styles = build_style_picker(ctx, tab)
    networks = build_networks_panel(ctx, tab, prompts, styles)
    wire_job_controls(ctx, interrupt, skip)
    return TabHeader(prompts, generate, interrupt, skip, networks)


def wire_job_controls(ctx: AppContext, interrupt: gr.Button, skip: gr.Button) -> None:
    """Interrupt and Skip act on the caller's own job only (looked up by browser session)."""

    def interrupt_own(request: gr.Request) -> None:
        if job := ctx.jobs.get(session_of(request)):
            job.interrupt()

    def skip_own(request: gr.Request) -> None:
        if job := ctx.jobs.get(session_of(request)):
            job.skip()

    interrupt.click(interrupt_own, None, None, api_visibility="private", queue=False)
    skip.click(skip_own, None, None, api_visibility="private", queue=False)
