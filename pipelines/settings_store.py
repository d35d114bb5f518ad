"""Settings that survive a restart: A1111's ``config.json`` (and ``ui-config.json``) beside the models folder.

The file holds A1111's key names, so a config.json copied from A1111 or Forge mostly just works, and every key
Easel does not know is kept and written back unchanged (A1111 does the same). Values for engine settings go
through ``pipelines.settings`` (the one validated writer) on the way in; the file is only a record of them.

Writes are atomic (a temp file in the same folder, fsynced, then ``os.replace``) and the file they replace is kept
as ``config.json.bak``. A file that cannot be parsed is moved aside as ``config.json.corrupt-<time>`` and
reported (``warnings``, shown by the UI, and the log); one that cannot be read at all is left where it is and
the store stops writing, so a user's settings are never lost to a silent overwrite.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import EaselError
from pipelines.settings import (
    MEMORY_SETTINGS,
    SAMPLING_BOUNDS,
    SAVE_SETTINGS,
    UPSCALER_TILE_SETTINGS,
    apply_settings,
    current_settings,
    validated_settings,
)

if TYPE_CHECKING:
    from pipelines.generate import Engine

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
UI_CONFIG_NAME = "ui-config.json"
CHECKPOINT_KEY = "sd_model_checkpoint"
ENGINE_KEYS: dict[str, str] = {
    "sd_vae": "sd_vae",
    "samples_save": "save_outputs",
    "show_progress_every_n_steps": "preview_every",
    "sd_checkpoint_cache": "ram_cache_size",  # 0: as many as fit in half the free RAM
    "randn_source": "randn_source",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
    **{name: name for name in SAMPLING_BOUNDS},  # eta_ancestral, eta_ddim, s_churn, s_tmin, s_tmax, s_noise, beta_*
    "CLIP_stop_at_last_layers": "clip_skip",
    **{name: name for name in SAVE_SETTINGS},  # samples_format, jpeg_quality, samples_filename_pattern, ...
    **{name: name for name in UPSCALER_TILE_SETTINGS},  # ESRGAN_tile, ESRGAN_tile_overlap
    **{name: name for name in MEMORY_SETTINGS},  # Easel's keys: A1111 has command-line flags only
}
"""A1111 config.json key -> engine setting (``pipelines.settings``)."""
SETTING_KEYS = {setting: key for key, setting in ENGINE_KEYS.items()}
"""Engine setting -> its A1111 key (what error messages and the Settings tab name)."""


def checkpoint_title(name: str, short_hash: str | None) -> str:
    """A1111's checkpoint title, ``name [hash]``, as config.json keeps ``sd_model_checkpoint``."""
    return f"{name} [{short_hash}]" if short_hash else name


def stored_value(setting: str, value: Any) -> Any:
    """An engine setting's value as A1111 writes it in config.json (its "Automatic" and 0 for "not set")."""
    if setting == "sd_vae":
        return "Automatic" if value is None else value
    if setting == "ram_cache_size":
        return value or 0
    return value


class JsonFile:
    """One JSON object on disk, written atomically with a backup; ``path`` None keeps it in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.writable = path is not None
        self.warnings: list[str] = []

    def load(self) -> dict[str, Any]:
        """The object in the file ({} when there is none); a corrupt file is moved aside and reported."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self.writable = False  # what is there may be fine: never write over what could not be read
            self._warn(f"{self.path} could not be read ({exc.strerror}); settings changes will not be saved")
            return {}
        try:
            values = json.loads(raw.decode("utf-8"))
            if not isinstance(values, dict):
                raise ValueError(f"it holds a JSON {type(values).__name__}, not an object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            aside = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now():%Y%m%d-%H%M%S}")
            try:
                os.replace(self.path, aside)
            except OSError as move_error:
                self.writable = False
                self._warn(
                    f"{self.path} is not valid JSON ({exc}) and could not be moved aside ({move_error.strerror}); "
                    "defaults are used and nothing will be saved over it"
                )
                return {}
            backup = self.backup_path
            hint = f"; the previous version is {backup}" if backup and backup.exists() else ""
            self._warn(f"{self.path} was not valid JSON ({exc}): kept as {aside}, defaults used{hint}")
            return {}
        return values

    @property
    def backup_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + ".bak")

    def save(self, values: Mapping[str, Any]) -> bool:
        """Write ``values`` (unchanged content is not rewritten); False when this file is not to be written."""
        if self.path is None or not self.writable:
            return False
        text = json.dumps(values, indent=4, ensure_ascii=False, sort_keys=False) + "\n"
        try:
            if self.path.exists() and self.path.read_text(encoding="utf-8") == text:
                return True
        except (OSError, UnicodeDecodeError):
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if self.path.exists():  # a copy, so config.json itself is there at every moment
                backup = self.backup_path
                assert backup is not None
                backup_temp = backup.with_name(f".{backup.name}.tmp")
                shutil.copyfile(self.path, backup_temp)
                os.replace(backup_temp, backup)
            os.replace(temp_name, self.path)
        except OSError as exc:
            Path(temp_name).unlink(missing_ok=True)
            raise EaselError(f"could not save the settings to {self.path}: {exc.strerror or exc}") from exc
        return True

    def _warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings.append(text)


class SettingsStore:
    """config.json (``values``: every key, A1111's names) and ui-config.json (``ui``: default values of fields).

    The webui layer calls ``record(engine)`` after every change it applied (Settings tab, VAE and checkpoint
    pickers, POST /options); start-up calls ``restore(engine)`` and ``checkpoint``. Thread-safe.
    """

    def __init__(self, config: JsonFile, ui_config: JsonFile) -> None:
        self._config = config
        self._ui_config = ui_config
        self._lock = threading.RLock()
        self.values: dict[str, Any] = config.load()
        self.ui: dict[str, Any] = ui_config.load()

    @classmethod
    def open(cls, folder: Path | None, config_file: Path | None = None) -> SettingsStore:
        """The store in ``folder`` (config.json and ui-config.json there); None: in memory only (tests, embedding)."""
        if folder is None and config_file is None:
            return cls(JsonFile(None), JsonFile(None))
        config_path = config_file if config_file is not None else Path(folder or ".") / CONFIG_NAME
        ui_path = (Path(folder) if folder is not None else config_path.parent) / UI_CONFIG_NAME
        return cls(JsonFile(config_path), JsonFile(ui_path))

    @property
    def path(self) -> Path | None:
        return self._config.path

    @property
    def ui_path(self) -> Path | None:
        return self._ui_config.path

    @property
    def warnings(self) -> list[str]:
        """What went wrong reading the files, for the UI to show (also logged)."""
        return [*self._config.warnings, *self._ui_config.warnings]

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint last in use (A1111's title form), if any."""
        value = self.values.get(CHECKPOINT_KEY)
        return value if isinstance(value, str) and value.strip() else None

    def restore(self, engine: Engine) -> list[str]:
        """Apply the file's engine settings; a bad value is skipped with a warning (returned and logged)."""
        problems: list[str] = []
        good: dict[str, Any] = {}
        for key, setting in ENGINE_KEYS.items():
            if key not in self.values:
                continue
            try:
                good.update(validated_settings(engine, {setting: self.values[key]}, SETTING_KEYS))
            except EaselError as exc:
                named = str(exc) if key in str(exc) else f"{key}: {exc}"
                problems.append(f"{self.path}: {named}; the default is used")
        apply_settings(engine, good, SETTING_KEYS)
        with self._lock:  # a skipped value must not linger as the default requests read (clip skip...)
            self.values = self.snapshot(engine)
        for text in problems:
            log.warning("%s", text)
        self._config.warnings.extend(problems)
        return problems

    def snapshot(self, engine: Engine) -> dict[str, Any]:
        """What config.json would hold now: the kept keys with the engine's values and checkpoint over them."""
        with self._lock:
            values = dict(self.values)
        for setting, value in current_settings(engine).items():
            values[SETTING_KEYS[setting]] = stored_value(setting, value)
        active = engine.manager.active
        if active is not None:
            values[CHECKPOINT_KEY] = checkpoint_title(active.info.name, active.hash)
        return values

    def record(self, engine: Engine, extra: Mapping[str, Any] | None = None) -> None:
        """Take the engine's settings (and ``extra`` keys, kept as given) and write config.json."""
        with self._lock:
            self.values = {**self.snapshot(engine), **(extra or {})}
            self._config.save(self.values)

    def record_ui(self, defaults: Mapping[str, Any]) -> None:
        """Merge ``defaults`` (``<tab>/<label>/value`` keys, as A1111's ui-config.json) and write ui-config.json."""
        with self._lock:
            self.ui = {**self.ui, **defaults}
            self._ui_config.save(self.ui)
