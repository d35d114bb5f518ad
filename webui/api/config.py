"""What the API needs besides the engine: limits, the command line to report, the options clients set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.encoders import jsonable_encoder

from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS
from pipelines.settings_store import SettingsStore

_SECRET_FLAGS = frozenset({"auth", "auth_file", "credentials", "security", "admin"})  # admin: login names


@dataclass
class ApiSettings:
    """Limits and echoes of one API; the model folders are the engine's (``engine.networks.folders``)."""

    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    cmd_flags: dict[str, Any] = field(default_factory=dict)
    store: SettingsStore = field(default_factory=lambda: SettingsStore.open(None))  # config.json: /options

    @property
    def options(self) -> dict[str, Any]:
        """Every option kept (config.json's keys): the defaults requests fall back on, e.g. clip skip."""
        return self.store.values


def public_cmd_flags(args: Any) -> dict[str, Any]:
    """The command line as JSON for /cmd-flags, with passwords and password files left out."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _SECRET_FLAGS:
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return jsonable_encoder(out)
