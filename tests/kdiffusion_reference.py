"""k-diffusion's ``sampling.py`` and ``external.py`` (MIT), loaded on their own as a test-only reference.

The ``k-diffusion`` wheel's package ``__init__`` imports its training modules (torchvision, kornia, wandb ...), which
do not install beside the CPU torch here, so it is installed with ``pip install --no-deps k-diffusion`` and only these
two files are loaded, under a private package name, with stand-ins for the two things they import that are not
needed for sampling (``utils.append_dims`` is re-stated; ``torchdiffeq`` only serves ``log_likelihood``).

``with_noise(module, draw)`` replaces the module's ``torch.randn_like`` with ``draw`` (as A1111's TorchHijack
does), so the reference takes the same noise as the sampler under test.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_PACKAGE = "_kdiffusion_reference"


def _source(name: str) -> Path | None:
    try:
        distribution = importlib.metadata.distribution("k-diffusion")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(f"k_diffusion/{name}")))
    return path if path.is_file() else None


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def load() -> types.SimpleNamespace | None:
    """``namespace(sampling=..., external=...)``, or None when the wheel is not installed."""
    sampling_path, external_path = _source("sampling.py"), _source("external.py")
    if sampling_path is None or external_path is None:
        return None
    if _PACKAGE in sys.modules:
        package = sys.modules[_PACKAGE]
        return types.SimpleNamespace(sampling=package.sampling, external=package.external)
    package = types.ModuleType(_PACKAGE)
    package.__path__ = []  # a package, so `from . import utils` resolves against it
    utils = types.ModuleType(f"{_PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    stand_in_torchdiffeq = types.ModuleType("torchdiffeq")
    stand_in_torchdiffeq.odeint = None
    had_torchdiffeq = "torchdiffeq" in sys.modules
    sys.modules[_PACKAGE] = package
    sys.modules[f"{_PACKAGE}.utils"] = utils
    if not had_torchdiffeq:
        sys.modules["torchdiffeq"] = stand_in_torchdiffeq
    try:
        for name, path in (("sampling", sampling_path), ("external", external_path)):
            spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            setattr(package, name, module)
    finally:
        if not had_torchdiffeq:
            del sys.modules["torchdiffeq"]
    return types.SimpleNamespace(sampling=package.sampling, external=package.external)


class _TorchWithNoise:
    """``torch`` for the reference module, except that ``randn_like`` returns the test's next draw."""

    def __init__(self, draw: Callable[[], torch.Tensor]) -> None:
        self._draw = draw

    def randn_like(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._draw().to(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def with_noise(sampling: types.ModuleType, draw: Callable[[], torch.Tensor]) -> None:
    sampling.torch = _TorchWithNoise(draw)
