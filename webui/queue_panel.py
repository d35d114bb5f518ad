"""The queue panel above the tabs: every job in line, refreshed by a cheap poll, and "cancel" for one's own.

UI plumbing only: what each user may see and cancel is ``pipelines.runtime.queue_view``; ``/easel/queue`` shows the
same rows to scripts. Without a login everyone is the same user, so every job is "yours".
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.runtime.queue_view import QueueRow, cancel_job, queue_rows
from webui.context import AppContext
from webui.users import ui_user

POLL_SECONDS = 1.0


def _row_html(row: QueueRow) -> str:
    if row.kind != "generation":
        cells = [str(row.position + 1), row.status, "—", "", "", html.escape(row.kind), ""]
    else:
        progress = ""
        if row.mine and row.status == "queued":
            progress = "next" if row.position <= 1 else f"{row.position} ahead"
        if row.progress is not None and row.status == "running":
            percent = round(row.progress * 100)
            progress = (
                f"<div class='easel-progress'><div class='easel-progress-bar' style='width:{percent}%'></div>"
                f"<span>{percent}% · step {row.step}/{row.total_steps}</span></div>"
            )
        prompt = html.escape(row.prompt) if row.prompt is not None else "<i>hidden</i>"
        cells = [
            str(row.position + 1),
            row.status,
            html.escape(row.owner or ""),
            row.size,
            str(row.images),
            prompt,
            progress,
        ]
    mine = " class='easel-queue-mine'" if row.mine else ""
    return f"<tr{mine}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def queue_html(rows: list[QueueRow]) -> str:
    if not rows:
        return "<div class='easel-queue-empty'>Nothing in line: the device is free.</div>"
    head = "".join(f"<th>{h}</th>" for h in ("#", "Status", "Who", "Size", "Images", "Prompt", "Progress"))
    body = "".join(_row_html(row) for row in rows)
    return f"<table class='easel-queue'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _label(rows: list[QueueRow]) -> str:
    waiting = sum(1 for row in rows if row.status == "queued")
    running = len(rows) - waiting
    if not rows:
        return "Queue · empty"
    mine = sum(1 for row in rows if row.mine)
    yours = f", {mine} yours" if mine else ""
    return f"Queue · {running} running, {waiting} waiting{yours}"


def _choices(rows: list[QueueRow]) -> list[tuple[str, str]]:
    """Jobs this viewer may cancel, as (label, job id)."""
    out = []
    for row in rows:
        if row.can_cancel:
            what = (row.prompt or "")[:40] if row.mine else f"{row.owner}'s job"
            out.append((f"#{row.position + 1} · {row.size} · {what}", row.id))
    return out


def build_queue_panel(ctx: AppContext) -> None:
    """Call inside ``with app:``; an accordion whose title says how many wait, open to see and cancel them."""
    with gr.Accordion(_label([]), open=False, elem_id="easel_queue_panel") as panel:
        table = gr.HTML(queue_html([]), elem_id="easel_queue")
        with gr.Row():
            pick = gr.Dropdown([], label="Cancel a job", elem_id="easel_queue_pick", scale=4)
            cancel = gr.Button("Cancel job", elem_id="easel_queue_cancel", variant="stop", scale=0, min_width=140)
    shown = gr.State(())  # the cancel choices last sent: the dropdown is only updated when they change
    timer = gr.Timer(POLL_SECONDS)

    def view(request: gr.Request) -> list[QueueRow]:
        user = ui_user(request)
        return queue_rows(ctx.engine.queue, user, ctx.is_admin(user))

    def refresh(last: tuple, request: gr.Request) -> tuple[Any, ...]:
        rows = view(request)
        choices = tuple(_choices(rows))
        pick_update = gr.update() if choices == tuple(last or ()) else gr.update(choices=list(choices))
        return gr.update(label=_label(rows)), queue_html(rows), pick_update, choices

    def cancel_picked(job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not job_id:
            raise gr.Error("Pick a job to cancel first.")
        user = ui_user(request)
        try:
            cancel_job(ctx.engine.queue, job_id, user, ctx.is_admin(user))
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info("Cancelled: a waiting job leaves the line, a running one stops after its current step.")
        rows = view(request)
        return gr.update(label=_label(rows)), queue_html(rows), gr.update(choices=_choices(rows), value=None), ()

    outputs = [panel, table, pick, shown]
    quiet: dict[str, Any] = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    timer.tick(refresh, [shown], outputs, **quiet)
    cancel.click(cancel_picked, [pick], outputs, **quiet)
