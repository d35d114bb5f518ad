"""What every tab and the API share: the engine, the per-session jobs, and the start-up facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.extensions.loader import LoadedExtensions
from pipelines.generate import Engine
from pipelines.metadata.history import OutputHistory
from pipelines.settings_store import SettingsStore
from webui.runner import JobRegistry


@dataclass
class AppContext:
    engine: Engine
    demo_checkpoint: str | None = None  # name of the random-weight demo checkpoint, when one was built
    jobs: JobRegistry = field(default_factory=JobRegistry)
    skipped_checkpoints: dict[str, str] = field(default_factory=dict)  # name -> why it could not load at start-up
    server_folders: bool = True  # the Extras tab may read server folders (off under --listen unless allowed)
    admins: frozenset[str] = frozenset()  # --admin: users who may cancel anyone's job in the queue
    history: OutputHistory = field(init=False)  # the outputs folder's images (History tab, /easel/history)

    settings: SettingsStore = field(default_factory=lambda: SettingsStore.open(None))  # config.json, ui-config.json
    startup_notes: list[str] = field(default_factory=list)  # e.g. the remembered checkpoint is gone: shown in the UI
    # dropdowns besides the top picker that list checkpoints (the refiners): the ↻ button refreshes them too
    checkpoint_lists: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history = OutputHistory(self.engine.outputs_dir)

    def is_admin(self, user: str | None) -> bool:
        return bool(user) and user in self.admins

    def save_settings(self) -> None:
        """Write the engine's settings and checkpoint to config.json (after any change the UI applied)."""
        self.settings.record(self.engine)

    extensions: LoadedExtensions | None = None  # None: started without extensions (tests, --disable-all-extensions)
    paste_targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # tab -> infotext key -> widget (extensions)
    extension_admin_allowed: bool = False  # install/update/remove from the UI (see ServerConfig)

    def checkpoint_names(self) -> list[str]:
        return [c.name for c in self.engine.manager.checkpoints]

    def active_name(self) -> str | None:
        active = self.engine.manager.active
        return active.info.name if active else None

    def demo_active(self) -> bool:
        return self.demo_checkpoint is not None and self.active_name() == self.demo_checkpoint
