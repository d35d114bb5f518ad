"""Finding checkpoints on disk (A1111 folder layout) and their A1111 "AutoV2" hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import EaselError
from pipelines.models.loader import PICKLE_SUFFIXES

CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint the user has: a single file or a diffusers folder."""

    path: Path
    name: str  # path relative to the checkpoints folder, '/'-separated: what the UI shows
    kind: str  # "safetensors" | "pickle" | "diffusers"

    @property
    def stem(self) -> str:
        return Path(self.name).stem if self.kind != "diffusers" else Path(self.name).name

    @property
    def model_name(self) -> str:
        """What A1111 writes as ``Model:`` in infotext: the file name without extension."""
        return Path(self.name).stem if self.kind != "diffusers" else Path(self.name).name


def list_checkpoints(folder: Path) -> list[CheckpointInfo]:
    """Every checkpoint below ``folder``, recursively, sorted by name; diffusers folders are not descended into."""
    found: list[CheckpointInfo] = []
    if not folder.is_dir():
        return found
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        if (here / "model_index.json").is_file():
            found.append(CheckpointInfo(here, here.relative_to(folder).as_posix(), "diffusers"))
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in files:
            suffix = Path(file).suffix.lower()
            if suffix in CHECKPOINT_SUFFIXES:
                kind = "safetensors" if suffix == ".safetensors" else "pickle"
                found.append(CheckpointInfo(here / file, (here / file).relative_to(folder).as_posix(), kind))
    return sorted(found, key=lambda c: c.name.lower())


def find_checkpoint(checkpoints: list[CheckpointInfo], query: str, hashes: HashCache | None = None) -> CheckpointInfo:
    """Match a checkpoint the way A1111 clients name one: title, file name, stem, or short hash."""
    query = query.strip()
    bare = query.split(" [")[0].strip()  # "name.safetensors [abcdef1234]" -> name
    for match in (
        lambda c: c.name == bare,
        lambda c: Path(c.name).name == bare,
        lambda c: c.stem == bare,
        lambda c: c.name.lower() == bare.lower() or c.stem.lower() == bare.lower(),
    ):
        hit = next((c for c in checkpoints if match(c)), None)
        if hit:
            return hit
    if hashes is not None and len(bare) >= 8:
        for c in checkpoints:
            cached = hashes.cached(c.path)
            if cached and cached.startswith(bare.lower()[:10]):
                return c
    raise EaselError(
        f"no checkpoint named '{query}'"
        + (f"; available: {', '.join(c.name for c in checkpoints)}" if checkpoints else "; the models folder is empty")
    )


class HashCache:
    """A1111 AutoV2 hashes (first 10 hex of the file's SHA-256), cached by path, size and mtime in a JSON file."""

    def __init__(self, cache_file: Path) -> None:
        self.cache_file = cache_file
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, dict] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self._entries = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, float]:
        st = path.stat()
        return st.st_size, st.st_mtime

    def cached(self, path: Path) -> str | None:
        """The hash if known for the file as it is now, without reading it."""
        if not path.is_file():
            return None
        entry = self._entries.get(str(path.resolve()))
        size, mtime = self._stamp(path)
        if entry and entry.get("size") == size and entry.get("mtime") == mtime:
            return entry["sha256"][:10]
        return None

    def autov2(self, path: Path) -> str | None:
        """The short hash, computing and caching it when needed; None for folders."""
        if not path.is_file():
            return None
        if hit := self.cached(path):
            return hit
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size, mtime = self._stamp(path)
        with self._lock:
            self._entries[str(path.resolve())] = {"size": size, "mtime": mtime, "sha256": digest.hexdigest()}
            self._save()
        return digest.hexdigest()[:10]

    def sha256(self, path: Path) -> str | None:
        """The file's full SHA-256 hex digest, computed and cached like ``autov2``; None for folders."""
        if self.autov2(path) is None:
            return None
        return self._entries[str(path.resolve())]["sha256"]

    def _save(self) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".hashes-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f, indent=1)
            os.replace(tmp, self.cache_file)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
