"""The History tab: every image in the outputs folder, newest first, a page at a time, with filters and a trash.

UI plumbing only: listing, search, thumbnails and the trash are ``pipelines.metadata.history.OutputHistory``. A page
shows thumbnails (made on first view, kept on disk); clicking one shows the image at full size with its infotext and
the "Send to" buttons (wired with PNG Info's in ``webui/prompt_tools.py`` by elem_id: ``history_send_<tab>``,
``history_text``, ``history_image``).
"""

from __future__ import annotations

import html
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.fields import MODES
from pipelines.metadata.history import HISTORY_MODES, HistoryItem, HistoryQuery
from webui.context import AppContext
from webui.users import ui_user

PER_PAGE = 36
ANY = "all"
THUMBNAIL_WORKERS = 4  # decoding releases the GIL: a first page's thumbnails are made side by side


@dataclass
class HistoryTab:
    gallery: gr.Gallery
    image: gr.Image
    infotext: gr.Textbox
    send_to_png_info: gr.Button


def _query(mode: str | None, date: str | None, checkpoint: str | None, q: str | None) -> HistoryQuery:
    return HistoryQuery(
        "" if mode in (None, ANY) else mode,
        "" if date in (None, ANY) else date,
        "" if checkpoint in (None, ANY) else checkpoint,
        q or "",
    )


def _caption(item: HistoryItem) -> str:
    prompt = item.facts.prompt.replace("\n", " ").strip()
    return prompt[:60] + ("…" if len(prompt) > 60 else "") if prompt else item.path.rsplit("/", 1)[-1]


def page_values(ctx: AppContext, query: HistoryQuery, page: int) -> tuple[list[tuple[str, str]], str, dict[str, Any]]:
    """Gallery value (thumbnail, caption), the page line, and the state that maps gallery indices to paths."""
    history = ctx.history
    try:
        result = history.page(query, 1, PER_PAGE)
        page = min(max(1, page), result.pages)
        if page != 1:
            result = history.page(query, page, PER_PAGE)
    except EaselError as exc:
        raise gr.Error(str(exc)) from exc

    def thumb(item: HistoryItem) -> tuple[str, str] | None:
        try:
            return str(history.thumbnail(item.path)), _caption(item)
        except EaselError:
            return None  # an unreadable file: left out of the gallery, still in the folder

    with ThreadPoolExecutor(THUMBNAIL_WORKERS) as pool:
        made = list(pool.map(thumb, result.items))
    shown = [(item, pair) for item, pair in zip(result.items, made, strict=True) if pair is not None]
    if result.total:
        line = f"Page {result.page} of {result.pages} · {result.total} image(s)"
    else:
        line = "No images match." if query.validated() != HistoryQuery() else "No images in the outputs folder yet."
    state = {"paths": [item.path for item, _ in shown], "page": result.page, "pages": result.pages}
    return [pair for _, pair in shown], line, state


def _details(ctx: AppContext, path: str) -> tuple[Any, str, str]:
    """Full-size image, its infotext, and a line naming the file."""
    try:
        item = ctx.history.item(path)
    except EaselError as exc:
        raise gr.Error(f"{exc} (deleted meanwhile? press ↻)") from exc
    f, facts = item.file, item.facts
    size = f"{facts.width}x{facts.height} · " if facts.width else ""
    where = html.escape(f.path)
    line = f"`{where}` · {f.mode} · {f.date} · {size}{f.bytes / 1024:.0f} KiB"
    return str(ctx.history.resolve(path)), facts.infotext or "This image has no generation parameters.", line


def _trash_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(f"{t.original} · deleted {t.deleted_at:%Y-%m-%d %H:%M}", t.id) for t in ctx.history.trash()]


def build_history_tab(ctx: AppContext, opened: gr.Tab) -> HistoryTab:
    """Call inside ``with gr.Tab(...) as opened``: selecting the tab loads the newest page."""
    with gr.Row(equal_height=True):
        mode = gr.Dropdown([ANY, *HISTORY_MODES], value=ANY, label="Mode", elem_id="history_mode", scale=1)
        date = gr.Dropdown([ANY], value=ANY, label="Date", allow_custom_value=True, elem_id="history_date", scale=1)
        checkpoint = gr.Dropdown(
            [ANY], value=ANY, label="Checkpoint", allow_custom_value=True, elem_id="history_checkpoint", scale=1
        )
        search = gr.Textbox(label="Search prompts", placeholder="words in the prompt, Enter", elem_id="history_search")
        refresh = gr.Button("↻", elem_id="history_refresh", scale=0, min_width=48)
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Outputs, newest first",
                columns=6,
                height=560,
                allow_preview=False,
                object_fit="cover",
                elem_id="history_gallery",
                interactive=False,
            )
            with gr.Row(equal_height=True):
                previous = gr.Button("◀ Newer", elem_id="history_previous", size="sm", scale=0, min_width=100)
                page_line = gr.Markdown("", elem_id="history_page")
                following = gr.Button("Older ▶", elem_id="history_next", size="sm", scale=0, min_width=100)
        with gr.Column(scale=2):
            image = gr.Image(
                label="Full size", type="filepath", interactive=False, format="png", elem_id="history_image", height=420
            )
            file_line = gr.Markdown("", elem_id="history_file", elem_classes=["easel-note"])
            text = gr.Textbox(label="Parameters", lines=5, interactive=False, buttons=["copy"], elem_id="history_text")
            with gr.Row():
                for tab in MODES:
                    gr.Button(f"Send to {tab}", elem_id=f"history_send_{tab}", size="sm")  # wired in prompt_tools
                send_png_info = gr.Button("Send to PNG Info", elem_id="history_send_png_info", size="sm")
            delete = gr.Button("Move to trash", elem_id="history_delete", size="sm", variant="stop")
    with gr.Accordion("Trash (outputs/.trash)", open=False, elem_id="history_trash_panel"):
        with gr.Row(equal_height=True):
            trash = gr.Dropdown([], label="Deleted images", elem_id="history_trash", scale=4)
            restore = gr.Button("Restore", elem_id="history_restore", scale=0, min_width=100)
            empty = gr.Button("Empty trash…", elem_id="history_empty_trash", variant="stop", scale=0, min_width=120)
        trash_line = gr.Markdown("", elem_classes=["easel-note"])
    state = gr.State({"paths": [], "page": 1, "pages": 1, "selected": None})
    filters = [mode, date, checkpoint, search]
    page_out = [gallery, page_line, state]

    def load(m: str, d: str, c: str, q: str, page: int = 1) -> tuple[Any, ...]:
        return page_values(ctx, _query(m, d, c, q), page)

    def first_page(m: str, d: str, c: str, q: str) -> tuple[Any, ...]:
        return load(m, d, c, q, 1)

    def step(m: str, d: str, c: str, q: str, st: dict, by: int) -> tuple[Any, ...]:
        return load(m, d, c, q, int((st or {}).get("page", 1)) + by)

    def choices(d: str, c: str) -> tuple[Any, Any, Any]:
        """Dates and checkpoints seen in the outputs (reading each image's header once, after the page shows)."""
        dates = [ANY, *ctx.history.dates()]
        models = [ANY, *ctx.history.checkpoints()]
        return (
            gr.update(choices=dates, value=d),
            gr.update(choices=models, value=c),
            gr.update(choices=_trash_choices(ctx)),
        )

    def select(st: dict, evt: gr.SelectData) -> tuple[Any, ...]:
        paths = (st or {}).get("paths", [])
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(paths):
            return gr.update(), gr.update(), gr.update(), st
        full, infotext, line = _details(ctx, paths[index])
        return full, infotext, line, {**st, "selected": paths[index]}

    def remove(m: str, d: str, c: str, q: str, st: dict) -> tuple[Any, ...]:
        path = (st or {}).get("selected")
        if not path:
            raise gr.Error("Click an image first.")
        try:
            ctx.history.delete(path)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Moved {path} to the trash (restore it below).")
        values, line, new_state = load(m, d, c, q, int(st.get("page", 1)))
        return values, line, new_state, None, "", "", gr.update(choices=_trash_choices(ctx), value=None)

    def put_back(trash_id: str | None, m: str, d: str, c: str, q: str, st: dict) -> tuple[Any, ...]:
        if not trash_id:
            raise gr.Error("Pick a deleted image first.")
        try:
            path = ctx.history.restore(trash_id)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        values, line, new_state = load(m, d, c, q, int((st or {}).get("page", 1)))
        note = f"Restored as `{html.escape(path)}`."
        return values, line, new_state, gr.update(choices=_trash_choices(ctx), value=None), note

    def empty_all(confirmed: bool, request: gr.Request) -> tuple[Any, str]:
        if not confirmed:
            return gr.update(), "Nothing deleted."
        if ctx.admins and not ctx.is_admin(ui_user(request)):
            raise gr.Error("Only an admin can empty the trash for good.")
        try:
            count = ctx.history.empty_trash()
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        return gr.update(choices=[], value=None), f"Deleted {count} image(s) for good."

    quiet: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    for dropdown in (mode, date, checkpoint):
        dropdown.input(first_page, filters, page_out, **quiet)
    search.submit(first_page, filters, page_out, **quiet)
    refresh.click(step, [*filters, state, gr.State(0)], page_out, **quiet).then(
        choices, [date, checkpoint], [date, checkpoint, trash], **quiet
    )
    previous.click(step, [*filters, state, gr.State(-1)], page_out, **quiet)
    following.click(step, [*filters, state, gr.State(1)], page_out, **quiet)
    gallery.select(select, [state], [image, text, file_line, state], **quiet)
    delete.click(remove, [*filters, state], [*page_out, image, text, file_line, trash], **quiet)
    restore.click(put_back, [trash, *filters, state], [*page_out, trash, trash_line], **quiet)
    empty.click(
        empty_all,
        [gr.State(False)],
        [trash, trash_line],
        js="() => [confirm('Delete every image in the trash for good? This cannot be undone.')]",
        **quiet,
    )
    # Opening the tab shows the newest page; the filters' choices follow once it is on screen.
    opened.select(first_page, filters, page_out, **quiet).then(
        choices, [date, checkpoint], [date, checkpoint, trash], **quiet
    )
    return HistoryTab(gallery, image, text, send_png_info)
