"""Start-up: models folder -> engine -> app -> server."""

from __future__ import annotations

import argparse
import logging

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.metadata.outputs import remove_unfinished_saves
from pipelines.models.checkpoints import HashCache
from pipelines.models.demo import ensure_demo_checkpoint
from pipelines.models.devices import choose_device, choose_dtype
from pipelines.models.manager import PipelineManager
from pipelines.networks.library import NetworkFolders, NetworkLibrary
from pipelines.runtime.queue import DEFAULT_QUEUE_SIZE, GenerationQueue
from webui.app import CSS, SHORTCUTS_JS, build_app
from webui.asgi import build_server_app, run_server
from webui.context import AppContext
from webui.security import security_from_args

log = logging.getLogger(__name__)


def build_context(args: argparse.Namespace) -> AppContext:
    """Find or build a checkpoint, load it, and wrap the engine for the UI."""
    remove_unfinished_saves(args.outputs_dir)  # what a save killed mid-way left behind (logged)
    demo = None if args.no_demo else ensure_demo_checkpoint(args.ckpt_dir)
    device = choose_device(args.device)
    manager = PipelineManager(
        args.ckpt_dir,
        device,
        choose_dtype(device, args.precision),
        HashCache(args.models_dir / ".easel-hashes.json"),
        args.ram_cache,
        args.allow_pickle,
    )
    folders = NetworkFolders(
        lora=args.models_dir / "Lora",
        vae=args.models_dir / "VAE",
        embeddings=args.embeddings_dir,
        styles=args.models_dir.parent / "styles.csv",
    )
    engine = Engine(
        manager,
        args.outputs_dir,
        queue=GenerationQueue(getattr(args, "queue_size", DEFAULT_QUEUE_SIZE)),
        networks=NetworkLibrary(folders, manager.hashes, args.allow_pickle),
    )
    ctx = AppContext(engine, demo_checkpoint=demo.relative_to(args.ckpt_dir).as_posix() if demo else None)
    if args.ckpt:  # asked for by name: starting on another model instead would make images from the wrong one
        log.info("loading %s", args.ckpt)
        try:
            manager.activate(args.ckpt)
        except EaselError as exc:
            raise EaselError(f"--ckpt {args.ckpt}: could not be loaded: {exc}") from exc
        return ctx
    candidates = _preferred(ctx)
    active, ctx.skipped_checkpoints = manager.activate_first(candidates)
    if active is not None:
        log.info("loaded %s", active.info.name)
    elif candidates:
        log.error("none of the %d checkpoints could be loaded; starting without one", len(candidates))
    return ctx


def _preferred(ctx: AppContext) -> list[str]:
    """Checkpoints in the order start-up tries them: the real ones by name, then the demo one."""
    names = ctx.checkpoint_names()
    return [n for n in names if n != ctx.demo_checkpoint] + [n for n in names if n == ctx.demo_checkpoint]


def serve(ctx: AppContext, args: argparse.Namespace) -> None:
    """UI and REST API on one port, behind one set of credentials; blocks until stopped."""
    security = getattr(args, "security", None)
    if security is None:
        security = security_from_args(args)
    app = build_app(ctx)
    server_app = build_server_app(ctx, app, args, security, css=CSS, js=SHORTCUTS_JS)
    run_server(server_app, security, args.port, api_enabled=not getattr(args, "no_api", False))
