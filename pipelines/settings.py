"""Run-time engine settings with one writer: the Settings tab, the VAE picker and ``POST /sdapi/v1/options``.

Each of them used to write ``EngineSettings`` (and the manager's RAM cache size) itself, with its own idea of what
"Automatic" means and of the bounds. ``apply_settings`` checks every change first and applies them only when all
are good, so a bad value never leaves half a change behind. Nothing is written to disk here
(``pipelines.settings_store`` keeps them in config.json).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipelines.errors import EaselError
from pipelines.metadata.filenames import check_format, check_pattern
from pipelines.networks.vae import find_vae, is_automatic
from pipelines.sampling.rng import SOURCES, parse_source
from pipelines.upscalers.library import MAX_TILE

if TYPE_CHECKING:
    from pipelines.generate import Engine

PREVIEW_EVERY_MAX = 150
"""The most steps a request may ask for: a longer period would never show a preview."""
RAM_CACHE_MAX = 64
"""Checkpoints kept in RAM at most (each is gigabytes); 0 means as many as fit in half the free RAM."""
# Sampling settings: name -> (low, high). A1111's config.json keys and its sliders' ranges.
SAMPLING_BOUNDS: dict[str, tuple[float, float]] = {
    "eta_ancestral": (0.0, 1.0),
    "eta_ddim": (0.0, 1.0),
    "s_churn": (0.0, 100.0),
    "s_tmin": (0.0, 10.0),
    "s_tmax": (0.0, 999.0),
    "s_noise": (0.0, 1.1),
    "beta_dist_alpha": (0.01, 1.0),
    "beta_dist_beta": (0.01, 1.0),
}
CLIP_SKIP_MAX = 12
SAVE_SETTINGS = (
    "samples_format",
    "jpeg_quality",
    "webp_lossless",
    "samples_filename_pattern",
    "save_to_dirs",
    "directories_filename_pattern",
)
"""How images are written (``pipelines.metadata.filenames.SaveOptions``), A1111's config.json keys."""
_ENGINE_FIELDS = ("randn_source", "eta_noise_seed_delta", *SAMPLING_BOUNDS, "clip_skip", *SAVE_SETTINGS)
"""Settings that are ``EngineSettings`` attributes of the same name."""
UPSCALER_TILE_SETTINGS = ("ESRGAN_tile", "ESRGAN_tile_overlap")
"""A1111's names; they live on the engine's upscaler library (tile side and overlap, in source pixels)."""
MEMORY_SETTINGS: dict[str, tuple[str, ...]] = {
    "memory_mode": ("auto", "high", "medium", "low"),  # --memory (A1111's --medvram/--lowvram are flags only)
    "vae_tiling": ("auto", "on", "off"),
}
"""The memory policy's choices (``pipelines.runtime.memory_policy``), kept in config.json like any setting."""
SETTING_NAMES = (
    "preview_every",
    "save_outputs",
    "sd_vae",
    "ram_cache_size",
    "randn_source",
    "eta_noise_seed_delta",
    *SAMPLING_BOUNDS,
    "clip_skip",
    *SAVE_SETTINGS,
    *UPSCALER_TILE_SETTINGS,
    *MEMORY_SETTINGS,
)


def _whole_number(label: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``: ints and whole floats (what sliders send); never bools or NaN."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number == int(number) and low <= number <= high):
        raise EaselError(f"{label} must be a whole number from {low} to {high} (got {value!r})")
    return int(number)


def _number(label: str, value: object, low: float, high: float) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise EaselError(f"{label} must be a number from {low:g} to {high:g} (got {value!r})")
    return float(number)


def _rng_source(label: str, value: object) -> str:
    try:
        return parse_source(str(value))
    except ValueError:
        raise EaselError(f"{label} must be one of {', '.join(SOURCES)} (got {value!r})") from None


def _flag(label: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise EaselError(f"{label} must be true or false (got {value!r})")


def normalized_vae(engine: Engine, name: object, label: str = "sd_vae") -> str | None:
    """None for the checkpoint's own VAE ("Automatic", "None", "" or None, any case); else the file's own name.

    A name that matches no file in the VAE folder is refused now, rather than failing every later generation.
    """
    if name is None or (isinstance(name, str) and is_automatic(name)):
        return None
    if not isinstance(name, str):
        raise EaselError(f"{label} must be a VAE file name, or Automatic")
    return find_vae(engine.networks.vae_files(), name).name


def _checked(engine: Engine, name: str, value: object, label: str) -> object:
    if name in MEMORY_SETTINGS:
        choices = MEMORY_SETTINGS[name]
        if value not in choices:
            raise EaselError(f"{label} must be one of {', '.join(choices)} (got {value!r})")
        return value
    if name == "preview_every":
        return _whole_number(label, value, 0, PREVIEW_EVERY_MAX)
    if name == "save_outputs":
        return _flag(label, value)
    if name == "sd_vae":
        return normalized_vae(engine, value, label)
    if name == "ram_cache_size":
        return _whole_number(label, 0 if value is None else value, 0, RAM_CACHE_MAX) or None
    if name == "randn_source":
        return _rng_source(label, value)
    if name == "eta_noise_seed_delta":
        return _whole_number(label, value, 0, 2**32 - 1)
    if name in SAMPLING_BOUNDS:
        return _number(label, value, *SAMPLING_BOUNDS[name])
    if name == "clip_skip":
        return _whole_number(label, value, 1, CLIP_SKIP_MAX)
    if name == "samples_format":
        return check_format(label, value)
    if name == "jpeg_quality":
        return _whole_number(label, value, 1, 100)
    if name in ("webp_lossless", "save_to_dirs"):
        return _flag(label, value)
    if name in ("samples_filename_pattern", "directories_filename_pattern"):
        return check_pattern(label, value)
    if name == "ESRGAN_tile":
        return _whole_number(label, value, 0, MAX_TILE)
    if name == "ESRGAN_tile_overlap":
        return _whole_number(label, value, 0, MAX_TILE // 2)
    raise EaselError(f"unknown setting '{label}' (settings: {', '.join(SETTING_NAMES)})")


def validated_settings(
    engine: Engine, changes: Mapping[str, object], labels: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The changes in canonical form; EaselError for the first bad one, named as ``labels`` says (the API's keys)."""
    labels = labels or {}
    return {name: _checked(engine, name, value, labels.get(name, name)) for name, value in changes.items()}


def current_settings(engine: Engine) -> dict[str, object]:
    """Every setting's value now, as ``apply_settings`` takes them."""
    return {
        "preview_every": engine.settings.preview_every,
        "save_outputs": engine.settings.save_outputs,
        "sd_vae": engine.settings.sd_vae,
        "ram_cache_size": engine.manager.ram_cache_size,
        **{name: getattr(engine.settings, name) for name in _ENGINE_FIELDS},
        "ESRGAN_tile": engine.upscalers.tile,
        "ESRGAN_tile_overlap": engine.upscalers.tile_overlap,
        "memory_mode": engine.manager.memory.settings.memory,
        "vae_tiling": engine.manager.memory.settings.vae_tiling,
    }


def apply_settings(engine: Engine, changes: Mapping[str, object], labels: Mapping[str, str] | None = None) -> list[str]:
    """Check every change, then apply them all; the names of the settings whose value changed."""
    checked = validated_settings(engine, changes, labels)
    before = current_settings(engine)
    for name, value in checked.items():
        if name in UPSCALER_TILE_SETTINGS:
            setattr(engine.upscalers, "tile" if name == "ESRGAN_tile" else "tile_overlap", value)
            continue
        if name in MEMORY_SETTINGS:  # the policy decides again for the next request
            setattr(engine.manager.memory.settings, "memory" if name == "memory_mode" else name, value)
            continue
        setattr(engine.manager if name == "ram_cache_size" else engine.settings, name, value)
    return [name for name, value in checked.items() if before[name] != value]
