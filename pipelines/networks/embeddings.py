"""Textual-inversion embeddings from the ``embeddings/`` folder, used in prompts by file stem (A1111's rule).

Formats read: A1111 ``.pt`` (``string_to_param: {"*": [n, dim]}``, only with ``--allow-pickle``, weights-only),
``.safetensors`` with ``emb_params`` (A1111/kohya), ``clip_l`` + ``clip_g`` (SDXL: one set per text encoder) or
a single tensor, and diffusers' ``learned_embeds`` (one ``{token: [dim]}`` entry). Files that cannot be read are
listed with the reason, never fatal; whether an embedding fits the loaded model is decided by ``PromptEncoder``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from pipelines.errors import EaselError
from pipelines.models.loader import PICKLE_SUFFIXES, load_pickle_weights, load_state_dict

log = logging.getLogger(__name__)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")

Vectors = torch.Tensor | tuple[torch.Tensor, ...]


def embedding_vectors(state: dict[str, object]) -> Vectors:
    """The vectors of one embedding file's contents: ``[n, dim]``, or one tensor per encoder for SDXL."""
    if "clip_l" in state and "clip_g" in state:
        return (_as_tensor(state["clip_l"]), _as_tensor(state["clip_g"]))
    if "string_to_param" in state:
        params = state["string_to_param"]
        if isinstance(params, dict) and params:
            return _as_tensor(next(iter(params.values())))
    if "emb_params" in state:
        return _as_tensor(state["emb_params"])
    tensors = [value for value in state.values() if isinstance(value, torch.Tensor) and value.is_floating_point()]
    if len(tensors) == 1:
        return _as_tensor(tensors[0])
    raise EaselError(f"not a textual-inversion embedding (keys: {', '.join(list(state)[:5])})")


def _as_tensor(value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EaselError("embedding vectors are not a tensor")
    vectors = value.detach().float()
    return vectors.reshape(1, -1) if vectors.dim() == 1 else vectors


def embedding_shape(path: Path) -> tuple[int, int] | None:
    """``(vectors, width)`` of a ``.safetensors`` embedding from its header alone; None when that cannot tell.

    For listings (the API's ``/embeddings``): nothing is loaded and pickles are never opened, so a damaged or
    unreadable file is just listed as skipped.
    """
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if not keys:
                return None
            shape = handle.get_slice(keys[0]).get_shape()
        return (shape[0] if len(shape) > 1 else 1), shape[-1]
    except Exception:  # whatever a damaged header raises, the file is listed as skipped, never an error
        return None


def _read(path: Path, allow_pickle: bool) -> Vectors:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise EaselError("pickle file: start Easel with --allow-pickle to use it (loaded weights-only)")
        data = load_pickle_weights(path)
        if not isinstance(data, dict):
            raise EaselError("holds no tensors")
        return embedding_vectors(data)
    return embedding_vectors(dict(load_state_dict(path)))


@dataclass
class EmbeddingSet:
    """What the folder holds now: readable embeddings by name, files that failed with why, and a version stamp."""

    vectors: dict[str, Vectors] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    version: tuple = ()


class EmbeddingLibrary:
    """Scans the folder on each use (a stat per file) and rereads only files that changed."""

    def __init__(self, folder: Path, allow_pickle: bool = False) -> None:
        self.folder = folder
        self.allow_pickle = allow_pickle
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, float], Vectors | str]] = {}
        self._current = EmbeddingSet()

    def refresh(self) -> None:
        """Forget every file read, so the next use rereads them all (even one rewritten with the same size and time)."""
        with self._lock:
            self._cache.clear()
            self._current = EmbeddingSet()

    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.rglob("*"), key=lambda p: p.as_posix().lower()):
            if path.is_file() and path.suffix.lower() in EMBEDDING_SUFFIXES and not path.name.startswith("."):
                found.setdefault(path.stem, path)
        return found

    def current(self) -> EmbeddingSet:
        """The embeddings as the folder holds them now; the same object while nothing changed."""
        files = self.files()
        stamps = {name: _stamp(path) for name, path in files.items()}
        version = tuple(sorted((name, str(files[name]), *stamp) for name, stamp in stamps.items()))
        with self._lock:
            if version == self._current.version:
                return self._current
            result = EmbeddingSet(version=version)
            for name, path in files.items():
                cached = self._cache.get(path)
                if cached is None or cached[0] != stamps[name]:
                    try:
                        loaded: Vectors | str = _read(path, self.allow_pickle)
                    except EaselError as exc:
                        loaded = str(exc)
                        log.warning("embedding %s skipped: %s", path.name, exc)
                    cached = (stamps[name], loaded)
                    self._cache[path] = cached
                if isinstance(cached[1], str):
                    result.failed[name] = cached[1]
                else:
                    result.vectors[name] = cached[1]
                    result.paths[name] = path
            self._current = result
            return result


def _stamp(path: Path) -> tuple[int, float]:
    st = path.stat()
    return st.st_size, st.st_mtime
