"""A1111's ``/options``: its keys read from and written to the engine's settings through ``pipelines.settings``.

Keys that name an engine setting go through the engine's one validated writer; ``sd_model_checkpoint`` switches
the model; every other key is kept in memory and echoed back (clients read back what they set).
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.networks.vae import AUTOMATIC
from pipelines.settings import SAMPLING_BOUNDS, UPSCALER_TILE_SETTINGS, apply_settings, validated_settings
from webui.api.checks import check_options
from webui.api.mapping import checkpoint_title

ENGINE_OPTIONS = {
    "sd_vae": "sd_vae",
    "samples_save": "save_outputs",
    "show_progress_every_n_steps": "preview_every",
    "sd_checkpoint_cache": "ram_cache_size",  # 0: as many as fit in half the free RAM
    "randn_source": "randn_source",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
    **{name: name for name in SAMPLING_BOUNDS},  # eta_ancestral, eta_ddim, s_churn, s_tmin, s_tmax, s_noise, beta_*
    **{name: name for name in UPSCALER_TILE_SETTINGS},  # ESRGAN_tile, ESRGAN_tile_overlap
}
"""A1111 option key -> engine setting (``pipelines.settings``)."""
_LABELS = {setting: key for key, setting in ENGINE_OPTIONS.items()}


def read_options(engine: Engine, stored: dict[str, Any]) -> dict[str, Any]:
    """What GET /options answers: the kept options, with the engine's own values over them."""
    manager = engine.manager
    active = manager.active
    return {
        **stored,
        "sd_model_checkpoint": checkpoint_title(active.info, active.hash) if active else None,
        "sd_checkpoint_hash": active.hash if active else None,
        "CLIP_stop_at_last_layers": stored.get("CLIP_stop_at_last_layers", 1),
        "samples_save": engine.settings.save_outputs,
        "samples_format": "png",
        "outdir_samples": "",
        "outdir_txt2img_samples": str(engine.outputs_dir / "txt2img-images"),
        "outdir_img2img_samples": str(engine.outputs_dir / "img2img-images"),
        "live_previews_enable": engine.settings.preview_every > 0,
        "show_progress_every_n_steps": engine.settings.preview_every,
        "sd_checkpoint_cache": manager.ram_cache_size or 0,
        "sd_vae": engine.settings.sd_vae or AUTOMATIC,
        **{key: getattr(engine.settings, key) for key in ("randn_source", "eta_noise_seed_delta", *SAMPLING_BOUNDS)},
        "ESRGAN_tile": engine.upscalers.tile,
        "ESRGAN_tile_overlap": engine.upscalers.tile_overlap,
        "enable_pnginfo": True,
        "return_grid": False,
    }


def _check_clip_skip(options: dict[str, Any]) -> None:
    """The API's default clip skip for requests that set none (kept with the options, not an engine setting)."""
    if "CLIP_stop_at_last_layers" in options:
        clip = options["CLIP_stop_at_last_layers"]
        if isinstance(clip, bool) or not isinstance(clip, int) or not 1 <= clip <= 12:
            raise EaselError("CLIP_stop_at_last_layers must be a whole number from 1 to 12")


def write_options(engine: Engine, stored: dict[str, Any], options: dict[str, Any]) -> None:
    """Check all of it, then switch the model (after the running job), apply engine settings and keep the rest."""
    check_options(options, stored)
    wanted = options.get("sd_model_checkpoint")
    if wanted is not None and (not isinstance(wanted, str) or not wanted.strip()):
        raise EaselError("sd_model_checkpoint must be a checkpoint title, file name or stem")
    changes = {setting: options[key] for key, setting in ENGINE_OPTIONS.items() if key in options}
    validated_settings(engine, changes, _LABELS)  # refused here, before the model switch, never half applied
    _check_clip_skip(options)
    if wanted is not None:
        engine.switch_checkpoint(wanted)
    apply_settings(engine, changes, _LABELS)
    stored.update({k: v for k, v in options.items() if k != "sd_model_checkpoint"})
