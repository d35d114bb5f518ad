"""What the API needs besides the engine: limits, the command line to report, the options clients set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.encoders import jsonable_encoder

from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS

_SECRET_FLAGS = frozenset({"auth", "auth_file", "credentials", "security", "admin"})  # admin: login names


@dataclass
class ApiSettings:
    """Limits and echoes of one API; the model folders are the engine's (``engine.networks.folders``)."""

    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    cmd_flags: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # options set through POST /options, echoed back


def public_cmd_flags(args: Any) -> dict[str, Any]:
    """The command line as JSON for /cmd-flags, with passwords and password files left out."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _SECRET_FLAGS:
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return jsonable_encoder(out)
