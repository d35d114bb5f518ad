"""The txt2img tab: prompt + parameters -> images in the gallery."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from pipelines.requests import GenerationRequest
from pipelines.runtime.queue_view import job_label
from webui.components import (
    OutputPanel,
    build_output_panel,
    build_param_panel,
    selected_seed,
    values_to_kwargs,
)
from webui.context import AppContext
from webui.derived import Derivation, click_after_sync
from webui.extensions_ui import build_extension_inputs, request_kwargs
from webui.runner import progress_html, session_of, stream_generation
from webui.tabs.generation_extras import build_generation_extras
from webui.tabs.header import build_tab_header
from webui.users import ui_user


def result_updates(
    ctx: AppContext, request: GenerationRequest, job_session: str, user: str = ""
) -> Iterator[tuple[Any, ...]]:
    """Run a request and yield values for an OutputPanel: live preview while working, the gallery at the end.

    ``user``: the logged-in name the queue shows the job under ("" without a login).
    """
    job = ctx.jobs.start(job_session, job_label(request, user))
    try:
        for _, result in stream_generation(ctx.engine, request, job):
            if result is None:
                preview = gr.update(value=job.preview, visible=job.preview is not None)
                yield gr.update(), preview, progress_html(job), gr.update(), gr.update()
                continue
            state = {"seeds": result.seeds, "infotexts": result.infotexts, "selected": 0}
            note = "Interrupted: " if result.interrupted else ""
            done = f"<div class='easel-progress done'>{note}{len(result.images)} image(s) in {job.elapsed:.1f}s</div>"
            first = result.infotexts[0] if result.infotexts else ""
            for warning in result.warnings:  # a missing LoRA or embedding: generated anyway, the user is told
                gr.Warning(warning)
            yield result.images, gr.update(value=None, visible=False), done, first, state
    finally:
        ctx.jobs.finish(job_session, job)


def build_txt2img_tab(ctx: AppContext, checkpoint: gr.Dropdown, derived: Sequence[Derivation] = ()) -> OutputPanel:
    header = build_tab_header(ctx, "txt2img")
    prompts, networks = header.prompts, header.networks
    with gr.Row():
        with gr.Column(scale=1):
            panel = build_param_panel("txt2img", checkpoints=ctx.checkpoint_names())
            ctx.checkpoint_lists.append(panel.refiner["refiner_checkpoint"])
            extras = build_generation_extras("txt2img", ctx.engine.upscalers.hires_names())
            ext = build_extension_inputs(ctx, "txt2img")
        with gr.Column(scale=1):
            out = build_output_panel("txt2img")

    def run(request: gr.Request, checkpoint_name: str | None, prompt: str, negative: str, *values: Any):
        request_obj = GenerationRequest(
            mode="txt2img",
            prompt=prompt or "",
            negative_prompt=negative or "",
            checkpoint=checkpoint_name or None,
            **values_to_kwargs(values[:n_params]),
            **(values[n_params] or {}),
            **(values[n_params + 1] or {}),
            **request_kwargs(values[n_params + 2]),  # extension fields and the chosen script
        )
        yield from result_updates(ctx, request_obj, session_of(request), ui_user(request))

    n_params = len(panel.inputs())
    inputs = [checkpoint, prompts.prompt, prompts.negative_prompt, *panel.inputs(), extras.state, networks.state]
    inputs.append(ext.state)  # States are no API parameters: the endpoint's positional signature stays
    click_after_sync(
        header.generate, derived, run, inputs=inputs, outputs=out.outputs(), api_name="txt2img", concurrency_limit=None
    )
    panel.reuse_seed.click(selected_seed, [out.result_state], [panel.seed], api_visibility="private", queue=False)
    return out
