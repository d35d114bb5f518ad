"""A1111's ``/options``: its keys read from and written to the settings store (config.json) and the engine.

Keys that name an engine setting go through the engine's one validated writer (``pipelines.settings``);
``sd_model_checkpoint`` switches the model; every other key is kept as given. All of it is written to
config.json (``pipelines.settings_store``), so a restart reads back what clients set.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import EaselError
from pipelines.generate import Engine
from pipelines.settings import apply_settings, validated_settings
from pipelines.settings_store import CHECKPOINT_KEY, ENGINE_KEYS, SETTING_KEYS, SettingsStore
from webui.api.checks import check_options

ENGINE_OPTIONS = ENGINE_KEYS
"""A1111 option key -> engine setting (``pipelines.settings_store.ENGINE_KEYS``)."""


def read_options(engine: Engine, store: SettingsStore) -> dict[str, Any]:
    """What GET /options answers: the kept options, with the engine's own values over them."""
    active = engine.manager.active
    values = store.snapshot(engine)
    return {
        **values,
        CHECKPOINT_KEY: values.get(CHECKPOINT_KEY) if active else None,
        "sd_checkpoint_hash": active.hash if active else None,
        "outdir_samples": "",
        "outdir_txt2img_samples": str(engine.outputs_dir / "txt2img-images"),
        "outdir_img2img_samples": str(engine.outputs_dir / "img2img-images"),
        "live_previews_enable": engine.settings.preview_every > 0,
        "enable_pnginfo": True,
        "return_grid": False,
    }


_DERIVED = frozenset(
    {
        "sd_checkpoint_hash",
        "outdir_samples",
        "outdir_txt2img_samples",
        "outdir_img2img_samples",
        "live_previews_enable",
        "enable_pnginfo",
        "return_grid",
    }
)
"""Keys GET /options answers from the engine's state: a client posting them back changes nothing, keeps nothing."""


def write_options(engine: Engine, store: SettingsStore, options: dict[str, Any]) -> None:
    """Check all of it, then switch the model (after the running job), apply engine settings, keep and save."""
    check_options(options, store.values)
    wanted = options.get(CHECKPOINT_KEY)
    if wanted is not None and (not isinstance(wanted, str) or not wanted.strip()):
        raise EaselError("sd_model_checkpoint must be a checkpoint title, file name or stem")
    changes = {setting: options[key] for key, setting in ENGINE_KEYS.items() if key in options}
    validated_settings(engine, changes, SETTING_KEYS)  # refused here, before the model switch, never half applied
    if wanted is not None:
        engine.switch_checkpoint(wanted)
    apply_settings(engine, changes, SETTING_KEYS)
    kept = {k: v for k, v in options.items() if k not in ENGINE_KEYS and k != CHECKPOINT_KEY and k not in _DERIVED}
    store.record(engine, kept)
