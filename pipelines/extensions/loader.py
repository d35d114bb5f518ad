"""Finding extensions (Easel's built-in folder, then the user's), importing each enabled one in isolation.

An extension that fails to import, lacks ``setup``, raises in it or declares a bad field is not loaded: its error
is kept for the Extensions tab and logged, anything it had registered is taken back, and start-up goes on.
Order is deterministic (manifest priority, then name), for the hooks and for the tabs alike.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import EaselError
from pipelines.extensions.context import Catalog, Contributions, ExtensionContext
from pipelines.extensions.manifest import MANIFEST, Manifest, read_manifest
from pipelines.extensions.state import ExtensionState
from pipelines.fields import FIELDS, FieldRegistry
from pipelines.hooks import EngineHooks

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "extensions"
"""Easel's own extensions folder (shipped in the repository)."""
MODULE_PREFIX = "easel_extension_"


@dataclass
class ExtensionRecord:
    """One extension folder as the Extensions tab lists it."""

    name: str
    folder: Path
    manifest: Manifest | None
    builtin: bool
    enabled: bool  # the saved choice; a change takes effect on the next start
    loaded: bool = False  # running in this process
    error: str | None = None
    contributions: Contributions | None = None

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else ""

    @property
    def description(self) -> str:
        return self.manifest.description if self.manifest else ""

    @property
    def active(self) -> bool:
        return self.loaded and self.error is None

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.manifest.priority if self.manifest else 1000, self.name)


class LoadedExtensions:
    """The extensions found at start-up, the ones running, and their engine hooks."""

    def __init__(
        self,
        records: list[ExtensionRecord],
        state: ExtensionState,
        user_dir: Path | None,
        builtin_dir: Path,
        registry: FieldRegistry = FIELDS,
        catalog: Catalog | None = None,
    ) -> None:
        self.records = sorted(records, key=lambda r: r.sort_key)
        self.catalog = Catalog() if catalog is None else catalog  # the server binds it to the engine's lists
        self.state = state
        self.user_dir = user_dir
        self.builtin_dir = builtin_dir
        self._registry = registry
        running = [r.contributions.hooks for r in self.records if r.loaded and r.contributions]
        self.hooks = EngineHooks(running, on_error=self._switched_off)

    def _switched_off(self, name: str, message: str) -> None:
        record = self.get(name)
        if record is not None and record.error is None:
            record.error = f"switched off until restart: {message}"

    def get(self, name: str) -> ExtensionRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def running(self) -> list[ExtensionRecord]:
        """Loaded extensions that have not failed since, in order."""
        return [r for r in self.records if r.active and r.contributions is not None]

    def unload(self) -> None:
        """Take every loaded extension's fields out of the registry (tests; a server never unloads)."""
        for record in self.records:
            if record.loaded:
                self._registry.remove_owner(record.name)
                sys.modules.pop(MODULE_PREFIX + record.name, None)
                record.loaded = False


def _folders(root: Path | None) -> list[Path]:
    if root is None or not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    return sorted(p for p in found if (p / MANIFEST).exists())


def discover(user_dir: Path | None, builtin_dir: Path, state: ExtensionState) -> list[ExtensionRecord]:
    """Every folder with a manifest: built-in ones first (those in Easel's folder whose manifest says so)."""
    same = user_dir is not None and builtin_dir.resolve() == user_dir.resolve()
    found: list[tuple[Path, bool]] = [(p, True) for p in _folders(builtin_dir)]
    if not same:
        found += [(p, False) for p in _folders(user_dir)]
    records: list[ExtensionRecord] = []
    seen: dict[str, Path] = {}
    for folder, in_builtin_dir in found:
        try:
            manifest = read_manifest(folder)
        except EaselError as exc:
            records.append(ExtensionRecord(folder.name, folder, None, False, False, error=str(exc)))
            continue
        builtin = in_builtin_dir and manifest.builtin
        record = ExtensionRecord(manifest.name, folder, manifest, builtin, state.enabled(manifest.name))
        if manifest.name in seen:
            record.enabled = False
            record.error = f"the name '{manifest.name}' is already used by {seen[manifest.name]}"
        seen.setdefault(manifest.name, folder)
        records.append(record)
    return records


def load_extensions(
    user_dir: Path | None,
    builtin_dir: Path = BUILTIN_DIR,
    state: ExtensionState | None = None,
    registry: FieldRegistry = FIELDS,
    config: Mapping[str, Any] | None = None,
) -> LoadedExtensions:
    """Discover, then import every enabled extension in order; failures are recorded, never raised.

    ``config``: config.json's values, where the extensions' settings (``ctx.setting``) are read from.
    """
    if state is None:
        state = ExtensionState.beside(user_dir if user_dir is not None else builtin_dir)
    records = discover(user_dir, builtin_dir, state)
    catalog = Catalog()
    for record in sorted(records, key=lambda r: r.sort_key):
        if record.enabled and record.error is None and record.manifest is not None:
            _load(record, record.manifest, state, registry, catalog, config or {})
    loaded = [r.name for r in records if r.loaded]
    log.info("extensions loaded: %s", ", ".join(loaded) or "none")
    return LoadedExtensions(records, state, user_dir, builtin_dir, registry, catalog)


def _load(
    record: ExtensionRecord,
    manifest: Manifest,
    state: ExtensionState,
    registry: FieldRegistry,
    catalog: Catalog,
    config: Mapping[str, Any],
) -> None:
    """Import the entry point as a package of its own and run ``setup(ctx)``; on any failure undo and record."""
    folder = record.folder.resolve()
    entry = (folder / manifest.entry).resolve()
    module_name = MODULE_PREFIX + manifest.name
    settings = state.settings(manifest.name)
    ctx = ExtensionContext(manifest.name, folder, manifest.priority, settings, registry, catalog, config)
    try:
        if not entry.is_relative_to(folder) or not entry.is_file():
            raise EaselError(f"entry point {manifest.entry} not found in {folder.name}/")
        spec = importlib.util.spec_from_file_location(module_name, entry, submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise EaselError(f"{manifest.entry} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # the extension's own modules import each other relatively
        spec.loader.exec_module(module)
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise EaselError(f"{manifest.entry} defines no setup(ctx) function")
        setup(ctx)
    except Exception as exc:
        registry.remove_owner(manifest.name)
        for name in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
            del sys.modules[name]
        where = "" if isinstance(exc, EaselError) else f"{type(exc).__name__}: "
        record.error = f"not loaded: {where}{exc}"
        log.error("extension %s not loaded: %s\n%s", manifest.name, exc, traceback.format_exc())
        return
    record.loaded = True
    record.contributions = ctx.contributions
