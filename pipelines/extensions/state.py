"""The user's choices about extensions (enabled or not, their settings), in one small JSON file.

``extensions-state.json`` lives beside the user extensions folder. Written atomically (temp file, then
``os.replace``); a file that cannot be read is kept aside as ``.broken`` and reported, never silently lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STATE_FILE = "extensions-state.json"


class ExtensionState:
    """``{"disabled": [names], "settings": {name: {key: value}}}``; every extension is enabled unless listed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._data = self._read()

    @classmethod
    def beside(cls, user_dir: Path) -> ExtensionState:
        return cls(user_dir.resolve().parent / STATE_FILE)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            kept = self.path.with_suffix(".json.broken")
            self.problem = f"{self.path} could not be read ({exc}); kept as {kept.name}, all extensions enabled"
            log.error(self.problem)
            with contextlib.suppress(OSError):
                os.replace(self.path, kept)
            return {}
        return data

    def enabled(self, name: str) -> bool:
        with self._lock:
            return name not in set(self._data.get("disabled", []))

    def settings(self, name: str) -> dict[str, Any]:
        with self._lock:
            value = self._data.get("settings", {}).get(name, {})
        return dict(value) if isinstance(value, dict) else {}

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._lock:
            disabled = [n for n in self._data.get("disabled", []) if n != name]
            if not enabled:
                disabled.append(name)
            self._data["disabled"] = sorted(disabled)
            self._write()

    def forget(self, name: str) -> None:
        """Drop what is kept about a removed extension."""
        with self._lock:
            self._data["disabled"] = [n for n in self._data.get("disabled", []) if n != name]
            self._data.get("settings", {}).pop(name, None)
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".extensions-state-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._data, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
