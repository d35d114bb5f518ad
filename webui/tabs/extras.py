"""The Extras tab (A1111's): upscale one picture, several uploads, or a folder on the server.

Widgets only: the work is ``pipelines.upscalers.extras.run_extras`` (one engine turn, progress in tiles, saved to
``outputs/extras-images`` with the parameters). Batch from a server folder is offered only where
``AppContext.server_folders`` allows it (on this machine, or under ``--listen`` with ``--allow-server-folders``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.imaging.upscale import MAX_UPSCALE_FACTOR, SCALE_BY, SCALE_TO, UpscaleSpec
from pipelines.upscalers.extras import ExtrasResult, folder_sources, run_extras
from webui.components import OutputPanel, build_output_panel
from webui.context import AppContext
from webui.image_inputs import read_image
from webui.runner import POLL_SECONDS, progress_html, session_of
from webui.tabs.header import wire_job_controls

SOURCES = ("single", "batch", "folder")
FOLDER_REFUSED = (
    "Batch from a server folder is off: this server listens on the network (--listen). Start it with "
    "--allow-server-folders to let logged-in users read folders on the server."
)


def _uploads(files: Sequence[Any] | None) -> list:
    """A loader per uploaded file, decoded (size-checked) only when its turn comes."""
    paths = [getattr(f, "name", f) for f in files or []]
    if not paths:
        raise gr.Error("No pictures: add one or more files to the batch first.")

    def loader(path: str):
        def load():
            image = read_image(path, Path(path).name)
            assert image is not None
            return image

        return load

    return [loader(path) for path in paths]


def build_extras_tab(ctx: AppContext) -> OutputPanel:
    names = ctx.engine.upscalers.names()
    source = gr.State("single")
    mode = gr.State(SCALE_BY)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="extras_sources"):
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(
                        label="Source",
                        type="filepath",
                        image_mode=None,
                        format="png",
                        sources=["upload", "clipboard"],
                        elem_id="extras_image",
                        height=320,
                    )
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(
                        label="Pictures", file_count="multiple", file_types=["image"], elem_id="extras_batch_files"
                    )
                with gr.Tab("Batch from Directory", id="folder", elem_id="extras_folder_tab") as folder_tab:
                    folder = gr.Textbox(
                        label="Input directory (on the server)",
                        placeholder="/path/to/pictures" if ctx.server_folders else "disabled under --listen",
                        interactive=ctx.server_folders,
                        elem_id="extras_folder",
                    )
                    if not ctx.server_folders:
                        gr.Markdown(FOLDER_REFUSED, elem_id="extras_folder_refused")
            with gr.Tabs(elem_id="extras_resize_tabs"):
                with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as by_tab:
                    factor = gr.Slider(1, MAX_UPSCALE_FACTOR, value=2, step=0.05, label="Resize", elem_id="extras_by")
                with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        width = gr.Number(value=512, precision=0, label="Width", elem_id="extras_width")
                        height = gr.Number(value=512, precision=0, label="Height", elem_id="extras_height")
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_crop")
            with gr.Row(equal_height=True):
                upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1", scale=4)
                refresh = gr.Button("↻", elem_id="extras_refresh", scale=0, min_width=48)
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(
                    0, 1, value=0, step=0.001, label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility"
                )
            with gr.Row():
                run_button = gr.Button("Upscale", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Interrupt", elem_id="extras_interrupt", size="sm")
                skip = gr.Button("Skip", visible=False, elem_id="extras_skip")
        with gr.Column(scale=1):
            out = build_output_panel("extras")

    for tab, value in ((single_tab, "single"), (batch_tab, "batch"), (folder_tab, "folder")):
        tab.select(lambda v=value: v, None, source, api_visibility="private", queue=False)
    by_tab.select(lambda: SCALE_BY, None, mode, api_visibility="private", queue=False)
    to_tab.select(lambda: SCALE_TO, None, mode, api_visibility="private", queue=False)
    wire_job_controls(ctx, interrupt, skip)

    def rescan() -> tuple[Any, Any]:
        ctx.engine.upscalers.refresh()
        choices = ctx.engine.upscalers.names()
        return gr.update(choices=choices), gr.update(choices=choices)

    refresh.click(rescan, None, [upscaler_1, upscaler_2], api_visibility="private", queue=False)

    def run(
        request: gr.Request,
        source_kind: str,
        single: str | None,
        uploads: Sequence[Any] | None,
        folder_path: str,
        resize_mode: int,
        by: float,
        to_width: float,
        to_height: float,
        crop_to_fit: bool,
        first: str,
        second: str,
        second_visibility: float,
    ) -> Iterator[tuple[Any, ...]]:
        spec = UpscaleSpec(
            resize_mode=int(resize_mode),
            upscaling_resize=float(by),
            upscaling_resize_w=int(to_width or 0),
            upscaling_resize_h=int(to_height or 0),
            upscaling_crop=bool(crop_to_fit),
            upscaler_1=first or "None",
            upscaler_2=second or "None",
            extras_upscaler_2_visibility=float(second_visibility or 0),
        )
        keep = True
        if source_kind == "folder":
            if not ctx.server_folders:
                raise gr.Error(FOLDER_REFUSED)
            if not (folder_path or "").strip():
                raise gr.Error("Type the folder on the server to read the pictures from.")
            try:
                sources = [load for _, load in folder_sources(Path(folder_path.strip()).expanduser())]
            except EaselError as exc:
                raise gr.Error(str(exc)) from exc
            keep = False  # a folder may hold hundreds: the gallery shows the saved files
        elif source_kind == "batch":
            sources = _uploads(uploads)
        else:
            picture = read_image(single, "image")
            if picture is None:
                raise gr.Error("No image: upload or paste a picture first (or send one from a gallery).")
            sources = [lambda: picture]
        yield from _stream(ctx, session_of(request), sources, spec, keep)

    inputs = [source, image, files, folder, mode, factor, width, height, crop, upscaler_1, upscaler_2, visibility]
    run_button.click(run, inputs, out.outputs(), api_name="extras", concurrency_limit=None)
    return out


def _stream(ctx: AppContext, session: str, sources: list, spec: UpscaleSpec, keep: bool) -> Iterator[tuple[Any, ...]]:
    """Run the upscale in a worker thread; progress while it works, the gallery at the end."""
    job = ctx.jobs.start(session)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = run_extras(ctx.engine, sources, spec, job, save=True, keep_images=keep)
        except EaselError as exc:
            box["error"] = str(exc)
        except Exception as exc:  # the server keeps running whatever happened
            box["error"] = f"the upscale failed: {type(exc).__name__}: {exc}"

    thread = threading.Thread(target=work, name="easel-extras", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_SECONDS)
            if thread.is_alive():
                yield gr.update(), gr.update(), progress_html(job), gr.update(), gr.update()
    finally:
        ctx.jobs.finish(session, job)
    if "error" in box:
        raise gr.Error(str(box["error"]))
    result: ExtrasResult = box["result"]
    shown: list[Any] = list(result.images) if keep else [str(path) for path in result.paths]
    note = "Interrupted: " if result.interrupted else ""
    saved = f", saved in {result.paths[0].parent}" if result.paths else ""
    done = (
        f"<div class='easel-progress done'>{note}{len(result.infotexts)} picture(s) in {job.elapsed:.1f}s{saved}</div>"
    )
    state = {"seeds": [], "infotexts": result.infotexts, "selected": 0}
    first = result.infotexts[0] if result.infotexts else ""
    yield shown, gr.update(value=None, visible=False), done, first, state
