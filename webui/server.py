"""Start-up: models folder -> engine -> app -> server."""

from __future__ import annotations

import logging

from pipelines.errors import EaselError
from pipelines.extensions.loader import load_extensions
from pipelines.generate import Engine
from pipelines.metadata.outputs import remove_unfinished_saves
from pipelines.models.checkpoints import HashCache
from pipelines.models.demo import ensure_demo_checkpoint
from pipelines.models.devices import choose_device, choose_dtype
from pipelines.models.manager import PipelineManager
from pipelines.networks.library import NetworkFolders, NetworkLibrary
from pipelines.runtime.placement import MemoryPolicy, MemorySettings
from pipelines.runtime.queue import GenerationQueue
from pipelines.settings_store import SettingsStore
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary
from webui.app import CSS, SHORTCUTS_JS, build_app
from webui.asgi import build_server_app, run_server
from webui.config import ServerConfig
from webui.context import AppContext
from webui.security import SecuritySettings, security_from_args

log = logging.getLogger(__name__)


def build_context(args: ServerConfig) -> AppContext:
    """Find or build a checkpoint, load it, and wrap the engine for the UI."""
    remove_unfinished_saves(args.outputs_dir)  # what a save killed mid-way left behind (logged)
    demo = None if args.no_demo else ensure_demo_checkpoint(args.ckpt_dir)
    device = choose_device(args.device)
    dtype = choose_dtype(device, args.precision)
    memory = MemorySettings(args.memory, args.vae_tiling, args.medvram_sdxl, args.fp8_weights, args.compile)
    manager = PipelineManager(
        args.ckpt_dir,
        device,
        dtype,
        HashCache(args.models_dir / ".easel-hashes.json"),
        args.ram_cache,
        args.allow_pickle,
        MemoryPolicy(device, dtype, memory),
    )
    folders = NetworkFolders.from_models_dir(args.models_dir, args.embeddings_dir)
    store = SettingsStore.open(args.data_dir, args.ui_settings_file)  # before the extensions: their settings
    extensions = None if args.disable_all_extensions else load_extensions(args.extensions_dir, config=store.values)
    engine = Engine(
        manager,
        args.outputs_dir,
        queue=GenerationQueue(args.queue_size),
        networks=NetworkLibrary(folders, manager.hashes, args.allow_pickle),
        upscalers=UpscalerLibrary(upscaler_folders(args), device, manager.dtype),
        hooks=extensions.hooks if extensions else None,
    )
    if extensions is not None:  # the names extensions may offer as choices (X/Y/Z's axes, SD upscale's upscalers)
        extensions.catalog.bind(
            checkpoints=lambda: [c.name for c in manager.checkpoints],
            vaes=engine.networks.vae_files,
            styles=engine.styles.names,
            upscalers=engine.upscalers.names,
        )
        extensions.catalog.bind_model_folders(
            args.allow_pickle, controlnet=[args.controlnet_dir], annotators=[args.models_dir / "annotators"]
        )
        extensions.catalog.bind_device(str(device))
    ctx = AppContext(
        engine,
        demo_checkpoint=demo.relative_to(args.ckpt_dir).as_posix() if demo else None,
        server_folders=args.server_folders_allowed,
        settings=store,
        extensions=extensions,
        extension_admin_allowed=args.extension_admin_allowed,
    )
    ctx.admins = frozenset(args.admin)
    store.restore(engine)  # bad values are skipped, logged and listed in store.warnings (the UI shows them)
    if args.ram_cache is not None:  # given on the command line: it wins over the file
        manager.ram_cache_size = args.ram_cache
    if args.memory != "auto":  # --memory, --medvram, --lowvram: the command line wins over the file too
        manager.memory.settings.memory = args.memory
    if args.vae_tiling != "auto":
        manager.memory.settings.vae_tiling = args.vae_tiling
    if args.ckpt:  # asked for by name: starting on another model instead would make images from the wrong one
        log.info("loading %s", args.ckpt)
        try:
            manager.activate(args.ckpt)
        except EaselError as exc:
            raise EaselError(f"--ckpt {args.ckpt}: could not be loaded: {exc}") from exc
        return ctx
    candidates = _preferred(ctx)
    remembered = store.checkpoint
    if remembered is not None:
        active, failed = manager.activate_first([remembered])  # any failure of that one file: fall back
        if active is not None:
            log.info("loaded %s (in use last time)", active.info.name)
            return ctx
        note = f"The checkpoint in use last time, `{remembered}`, could not be loaded ({failed[remembered]})"
        ctx.startup_notes.append(note + "; Easel started on another one.")
    active, ctx.skipped_checkpoints = manager.activate_first(candidates)
    if active is not None:
        log.info("loaded %s", active.info.name)
    elif candidates:
        log.error("none of the %d checkpoints could be loaded; starting without one", len(candidates))
    return ctx


def upscaler_folders(args: ServerConfig) -> UpscalerFolders:
    """A1111's upscaler folders under --models-dir, each replaced by its --*-models-path flag when given."""
    return UpscalerFolders.from_models_dir(
        args.models_dir,
        esrgan=args.esrgan_models_path,
        realesrgan=args.realesrgan_models_path,
        swinir=args.swinir_models_path,
        dat=args.dat_models_path,
        hat=args.hat_models_path,
    )


def _preferred(ctx: AppContext) -> list[str]:
    """Checkpoints in the order start-up tries them: the real ones by name, then the demo one."""
    names = ctx.checkpoint_names()
    return [n for n in names if n != ctx.demo_checkpoint] + [n for n in names if n == ctx.demo_checkpoint]


def serve(ctx: AppContext, config: ServerConfig, security: SecuritySettings | None = None) -> None:
    """UI and REST API on one port, behind one set of credentials; blocks until stopped.

    ``security`` is what ``security_from_args(config)`` gave (start-up checks it before loading any model).
    """
    security = security_from_args(config) if security is None else security
    app = build_app(ctx)
    server_app = build_server_app(ctx, app, config, security, css=CSS, js=SHORTCUTS_JS)
    run_server(server_app, security, config.port, api_enabled=config.api_enabled)
