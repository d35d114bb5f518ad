"""Importing spandrel without torchvision.

spandrel (the upscaler architecture library) lists torchvision as a requirement, and its package ``__init__`` imports
every architecture eagerly; two of them import torchvision at module level: LaMa (inpainting; ``rotate`` and
``InterpolationMode``) and RestoreFormer (face restoration; ``normalize``). Both use it only inside ``forward``, and
neither is an upscaler. PyPI's torchvision does not import beside every torch build (a CPU torch 2.13 here fails with
"operator torchvision::nms does not exist"), and the builds that pair do not suit a light install, so Easel installs
spandrel with ``--no-deps`` and no torchvision.

``load_spandrel`` imports spandrel as it is when torchvision imports; otherwise it lets spandrel's import see
placeholder ``torchvision`` modules for the length of the import only, then removes them from ``sys.modules``, so no
other library ever sees them. Calling into a placeholder (running LaMa or RestoreFormer) raises EaselError.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

from pipelines.errors import EaselError

SPANDREL_VERSION = "0.4.2"
TORCHVISION_ARCHITECTURES = ("LaMa", "RestoreFormer")
"""spandrel architectures that need torchvision to run: unavailable without it."""
_PLACEHOLDERS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()
_state: dict[str, Any] = {}


class _Unavailable:
    """What a placeholder module hands out: usable as a name at import time, an error when used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{attribute}")

    def __call__(self, *args: object, **kwargs: object) -> Any:
        raise EaselError(
            f"{self._name} is part of torchvision, which Easel does not install; the spandrel architectures that "
            f"need it ({', '.join(TORCHVISION_ARCHITECTURES)}) are not available"
        )


class _PlaceholderModule(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Unavailable(f"{self.__name__}.{attribute}")


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers for the torchvision modules spandrel imports, ahead of any installed (and broken) torchvision."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        if fullname not in _PLACEHOLDERS:
            return None  # type: ignore[return-value]
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname != _PLACEHOLDERS[-1])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []  # type: ignore[attr-defined]  # a package, so submodules resolve through this finder
        return module

    def exec_module(self, module: ModuleType) -> None:
        return None


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a build for another torch fails in its C++ operator registration
        return False
    return True


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


def _import_with_placeholders() -> ModuleType:
    _forget(("spandrel", "torchvision"))  # whatever a failed import left half-done
    finder = _PlaceholderFinder()
    sys.meta_path.insert(0, finder)
    try:
        import spandrel
    finally:
        sys.meta_path.remove(finder)
        for name in _PLACEHOLDERS:
            if isinstance(sys.modules.get(name), _PlaceholderModule):
                del sys.modules[name]
    return spandrel


def load_spandrel() -> ModuleType:
    """The spandrel module (imported once); EaselError saying how to install it when it is missing."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        if importlib.util.find_spec("spandrel") is None:
            raise EaselError(
                "model upscalers need the spandrel package, which is not installed: run ./webui.sh once, or "
                f'"pip install --no-deps spandrel=={SPANDREL_VERSION} einops"'
            )
        _state["torchvision"] = _torchvision_works()
        if _state["torchvision"]:
            import spandrel
        else:
            spandrel = _import_with_placeholders()
        _state["module"] = spandrel
        return spandrel


def torchvision_available() -> bool:
    """Whether spandrel was imported with a working torchvision (after ``load_spandrel``)."""
    load_spandrel()
    return bool(_state["torchvision"])
