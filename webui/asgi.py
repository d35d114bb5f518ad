"""One HTTP server for the UI and the REST API: FastAPI app, security middleware, API routes, Gradio on top.

Order matters: the API routes are registered before Gradio is mounted at ``/`` (a mount at ``/`` shadows any
route added after it), and the security middleware wraps everything, Gradio included.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from pipelines.metadata.history import TRASH_FOLDER
from webui.api import ApiSettings, build_api_router, install_error_handlers, public_cmd_flags
from webui.api.routes_easel import build_easel_router
from webui.config import ServerConfig
from webui.context import AppContext
from webui.extensions_ui import mount_extension_routes
from webui.security import SecurityMiddleware, SecuritySettings, is_loopback, lan_addresses

log = logging.getLogger(__name__)
# Seconds a stop (Ctrl+C, SIGTERM) waits for open requests. Gradio's event streams (heartbeat, queue) stay open as
# long as a browser tab does, so each stop used to wait out the whole timeout; a response being written finishes
# well within this.
GRACEFUL_SHUTDOWN_S = 1


def build_server_app(
    ctx: AppContext,
    blocks: gr.Blocks,
    config: ServerConfig,
    security: SecuritySettings,
    css: str | None = None,
    js: str | None = None,
) -> FastAPI:
    """The FastAPI app that serves everything; nothing is listening yet."""
    api_enabled = config.api_enabled
    app = FastAPI(
        title="Easel API",
        description="AUTOMATIC1111-compatible REST API (/sdapi/v1). HTTP Basic auth when the server has credentials.",
        docs_url="/docs" if api_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if api_enabled else None,
    )
    # A parent CORSMiddleware makes Gradio leave CORS to us; with no origins listed it grants none.
    app.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    gradio_app: dict[str, Any] = {}
    app.add_middleware(
        SecurityMiddleware, settings=security, gradio_tokens=lambda: getattr(gradio_app.get("app"), "tokens", None)
    )
    if api_enabled:
        install_error_handlers(app)
        app.include_router(build_api_router(ctx, ApiSettings(cmd_flags=public_cmd_flags(config), store=ctx.settings)))
        app.include_router(build_easel_router(ctx))  # /easel/history, /easel/queue
    mount_extension_routes(app, ctx)  # /<extension>/..., inside the security middleware like everything else

    # Gradio's own line only feeds the engine's (the one that is bounded and shown): it just must not be shorter.
    blocks.queue(default_concurrency_limit=1, max_size=max(64, 2 * ctx.engine.queue.max_size))
    outputs = Path(ctx.engine.outputs_dir).resolve()
    # deleted images stay in outputs/.trash until emptied: restorable from History, never served as files
    blocked = {config.models_dir.resolve(), config.ckpt_dir.resolve(), outputs / TRASH_FOLDER}
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        server_name=security.host,
        server_port=config.port,
        footer_links=["settings"],
        auth=security.credentials.as_gradio_auth(),
        allowed_paths=[str(outputs)],
        blocked_paths=[str(p) for p in blocked],
        show_error=True,
        max_file_size=security.max_upload_bytes,
        ssr_mode=False,
        css=css,
        js=js,
    )
    gradio_app["app"] = next(r.app for r in app.routes if isinstance(r, Mount) and r.path in ("", "/"))
    check_file_payloads(blocks)
    return app


def check_file_payloads(blocks: gr.Blocks) -> None:
    """Turn on Gradio's own check of file paths in event payloads, for every event at once.

    Gradio checks each FileData path an event receives (only files uploaded to its cache are accepted as inputs;
    outputs must come from ``allowed_paths``, never ``blocked_paths``) but only once ``has_launched`` is set,
    which ``launch()`` does and ``mount_gradio_app`` does not. Without it any logged-in user could name any
    server path in an event payload and get a copy of the file back.
    """
    blocks.has_launched = True


def reachable_urls(host: str, port: int, scheme: str = "http") -> list[str]:
    """Every URL the server answers at: loopback, and the LAN addresses when bound beyond it."""
    urls = [f"{scheme}://127.0.0.1:{port}"]
    if host in ("0.0.0.0", "::", ""):
        urls += [f"{scheme}://{address}:{port}" for address in lan_addresses()]
    elif not is_loopback(host):
        urls = [f"{scheme}://{host}:{port}"]
    return urls


def banner(urls: list[str], security: SecuritySettings, api_enabled: bool) -> str:
    lines = ["", "Easel is running. Open it at:"]
    lines += [f"  {url}/" for url in urls]
    if api_enabled:
        lines.append(f"REST API (A1111-compatible): {urls[0]}/sdapi/v1  docs: {urls[0]}/docs")
    if security.credentials:
        lines.append(f"Login required ({len(security.credentials.users)} user(s)); API: HTTP Basic, same credentials.")
    elif not is_loopback(security.host):
        lines.append("WARNING: no login required (--insecure-no-auth): anyone on this network can use it.")
    if not security.tls and not is_loopback(security.host):
        lines.append(
            "WARNING: plain HTTP on the network: passwords, prompts and images cross the LAN in clear text, readable "
            "by anyone on it. Add --tls-self-signed (or --tls-certfile/--tls-keyfile)."
        )
    if security.tls and security.tls.fingerprint:
        lines.append(f"HTTPS certificate {security.tls.certfile} (self-signed), SHA-256 fingerprint:")
        lines.append(f"  {security.tls.fingerprint}")
        lines.append("Browsers warn once about it: check that they show this fingerprint, then accept it.")
    return "\n".join(lines) + "\n"


def run_server(app: FastAPI, security: SecuritySettings, port: int, api_enabled: bool) -> None:
    """Serve until stopped (Ctrl+C); prints the banner once the socket is listening."""
    config = uvicorn.Config(
        app,
        host=security.host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        proxy_headers=False,
        ssl_certfile=str(security.tls.certfile) if security.tls else None,
        ssl_keyfile=str(security.tls.keyfile) if security.tls else None,
    )
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(banner(reachable_urls(security.host, port, security.scheme), security, api_enabled), flush=True)

    threading.Thread(target=announce, name="easel-banner", daemon=True).start()
    server.run()
