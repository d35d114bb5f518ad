"""The Extensions tab: what is installed (built-in or user, enabled, running, errors), enable/disable, install from
a git URL or a local folder, update, remove. Changes take effect on the next start, and the tab says so.

Installing, updating and removing run code from elsewhere on this machine, so on a server open to the LAN they are
refused unless it was started with ``--enable-insecure-extension-access`` (as A1111 does); the handlers check,
not only the buttons, since a Gradio event can be called without the page.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from pipelines.errors import EaselError
from pipelines.extensions import install as installer
from pipelines.extensions.loader import ExtensionRecord, LoadedExtensions
from pipelines.extensions.manifest import read_manifest
from webui.context import AppContext

RESTART = "Restart Easel for this to take effect."
REFUSED = (
    "Installing, updating and removing extensions is turned off: this server is open to the network. "
    "Start it with --enable-insecure-extension-access to allow it (an extension is code that runs on this machine)."
)


def _status(record: ExtensionRecord) -> str:
    if record.error:
        return record.error
    if record.loaded:
        return "running" if record.enabled else "running (disabled from the next start)"
    return "disabled" if not record.enabled else "installed: loads on the next start"


def extensions_table(extensions: LoadedExtensions | None) -> str:
    """The list as an HTML table (escaped: names and errors come from extension folders)."""
    if extensions is None or not extensions.records:
        return "<p id='extensions_empty'>No extensions installed.</p>"
    rows = []
    for r in extensions.records:
        cells = [
            f"<b>{html.escape(r.name)}</b><br><small>{html.escape(r.description)}</small>",
            html.escape(r.version),
            "built-in" if r.builtin else "user",
            "✔" if r.enabled else "✘",
            html.escape(_status(r)),
        ]
        error = " class='easel-ext-error'" if r.error else ""
        rows.append(f"<tr{error}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Extension", "Version", "Kind", "Enabled", "Status"))
    return f"<table class='easel-extensions'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _names(extensions: LoadedExtensions | None) -> list[str]:
    return [r.name for r in extensions.records] if extensions else []


def build_extensions_tab(ctx: AppContext) -> None:
    extensions = ctx.extensions
    allowed = ctx.extension_admin_allowed
    where = extensions.user_dir if extensions else None
    intro = f"User extensions folder: `{where}`. " if where else ""
    gr.Markdown(f"{intro}Enabling, disabling, installing and removing take effect when Easel is restarted.")
    table = gr.HTML(extensions_table(extensions), elem_id="extensions_table")
    with gr.Row():
        chosen = gr.Dropdown(_names(extensions), label="Extension", elem_id="extensions_choice", scale=3)
        enabled = gr.Checkbox(True, label="Enabled", elem_id="extensions_enabled", scale=1)
        save = gr.Button("Apply (on restart)", elem_id="extensions_apply", scale=1)
    with gr.Row():
        update = gr.Button("Update (git pull)", elem_id="extensions_update", interactive=allowed)
        remove = gr.Button("Remove", elem_id="extensions_remove", variant="stop", interactive=allowed)
    with gr.Row():
        source = gr.Textbox(
            label="Install from a git URL or a folder on this machine",
            placeholder="https://github.com/someone/easel-extension.git",
            elem_id="extensions_source",
            scale=4,
            interactive=allowed,
        )
        install = gr.Button("Install", variant="primary", elem_id="extensions_install", scale=1, interactive=allowed)
    notice = gr.Markdown("" if allowed else f"🔒 {REFUSED}", elem_id="extensions_notice")

    def need(name: str | None) -> tuple[LoadedExtensions, ExtensionRecord]:
        if extensions is None:
            raise gr.Error("Extensions are turned off on this server (--disable-all-extensions).")
        record = extensions.get(name or "")
        if record is None:
            raise gr.Error("Choose an extension first.")
        return extensions, record

    def gate() -> None:
        if not allowed:
            raise gr.Error(REFUSED)

    def pick(name: str | None) -> Any:
        record = extensions.get(name or "") if extensions else None
        return gr.update(value=record.enabled if record else True)

    def apply(name: str | None, on: bool) -> tuple[str, str]:
        exts, record = need(name)
        exts.state.set_enabled(record.name, bool(on))
        record.enabled = bool(on)
        return extensions_table(exts), f"**{record.name}** {'enabled' if on else 'disabled'}. {RESTART}"

    def do_update(name: str | None) -> tuple[str, str]:
        gate()
        exts, record = need(name)
        if record.builtin:
            raise gr.Error(f"{record.name} is built in: it is updated with Easel itself.")
        try:
            summary = installer.update(record.folder)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        return extensions_table(exts), f"**{record.name}**: {summary}. {RESTART}"

    def do_remove(name: str | None) -> tuple[str, str, Any]:
        gate()
        exts, record = need(name)
        if record.builtin or exts.user_dir is None:
            raise gr.Error(f"{record.name} is built in and cannot be removed (disable it instead).")
        try:
            installer.remove(record.folder, exts.user_dir)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        exts.state.forget(record.name)
        exts.records.remove(record)
        note = " Its code stays loaded until then." if record.loaded else ""
        message = f"**{record.name}** removed. {RESTART}{note}"
        return extensions_table(exts), message, gr.update(choices=_names(exts), value=None)

    def do_install(text: str) -> tuple[str, str, Any]:
        gate()
        if extensions is None or extensions.user_dir is None:
            raise gr.Error("Extensions are turned off on this server (--disable-all-extensions).")
        try:
            name = installer.install(text or "", extensions.user_dir, set(_names(extensions)))
            manifest = read_manifest(extensions.user_dir / name)
        except EaselError as exc:
            raise gr.Error(str(exc)) from exc
        folder = extensions.user_dir / name
        extensions.records.append(ExtensionRecord(name, folder, manifest, False, extensions.state.enabled(name)))
        message = f"**{name}** {manifest.version} installed. {RESTART}"
        return extensions_table(extensions), message, gr.update(choices=_names(extensions), value=name)

    chosen.change(pick, chosen, enabled, queue=False, api_visibility="private")
    save.click(apply, [chosen, enabled], [table, notice], api_name="extensions_apply")
    update.click(do_update, chosen, [table, notice], api_name="extensions_update", concurrency_limit=1)
    remove.click(do_remove, chosen, [table, notice, chosen], api_name="extensions_remove", concurrency_limit=1)
    install.click(do_install, source, [table, notice, chosen], api_name="extensions_install", concurrency_limit=1)
