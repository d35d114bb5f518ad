"""``extension.toml``: what an extension is (name, version, description, the Easel API it needs, order, entry)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import EaselError

MANIFEST = "extension.toml"
EASEL_API = 1
"""The extension API this Easel provides; a manifest asking for a newer one is refused with a clear message."""
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""Names are route prefixes (``/<name>/``), field namespaces (``<name>.field``) and folder names at once."""
RESERVED = frozenset({"sdapi", "docs", "redoc", "openapi", "login", "logout", "gradio_api", "assets", "static", "file"})


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    easel_api: int
    priority: int  # lower runs first; ties by name
    entry: str  # a .py file inside the extension's folder, defining ``setup(ctx)``
    builtin: bool  # only honoured for the folders shipped in Easel's own extensions/ (see loader)


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest, checked; EaselError saying what is wrong (the Extensions tab shows it)."""
    path = folder / MANIFEST
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EaselError(f"no {MANIFEST} in {folder.name}/") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EaselError(f"{MANIFEST} of {folder.name}/ cannot be read: {exc}") from None
    name = data.get("name", folder.name)
    if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED:
        raise EaselError(
            f"{folder.name}/{MANIFEST}: name {name!r} must be 1-40 lower-case letters, digits or _, starting with a "
            "letter, and not a name Easel uses itself"
        )
    api = data.get("easel_api", EASEL_API)
    if isinstance(api, bool) or not isinstance(api, int) or api < 1:
        raise EaselError(f"{name}: easel_api must be a whole number (this Easel provides {EASEL_API})")
    if api > EASEL_API:
        raise EaselError(f"{name} needs Easel extension API {api}; this Easel provides {EASEL_API}: update Easel")
    priority = data.get("priority", 100)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise EaselError(f"{name}: priority must be a whole number")
    entry = data.get("entry", "extension.py")
    inside = isinstance(entry, str) and not Path(entry).is_absolute() and ".." not in Path(entry).parts
    if not inside or not entry.endswith(".py"):
        raise EaselError(f"{name}: entry must be a .py file inside the extension's folder")
    return Manifest(
        name=name,
        version=str(data.get("version", "0")),
        description=str(data.get("description", "")),
        easel_api=api,
        priority=priority,
        entry=entry,
        builtin=bool(data.get("builtin", False)),
    )
