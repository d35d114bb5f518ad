"""The one place checkpoints live in memory: the active model on the device, recent ones in a RAM cache.

Every mode (txt2img, img2img, inpaint) runs Easel's own denoising loop over the SAME module objects, so there is
one copy of the weights however many tabs are used.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipelines.errors import EaselError
from pipelines.models.checkpoints import CheckpointInfo, HashCache, find_checkpoint, list_checkpoints
from pipelines.models.devices import available_ram_bytes, module_bytes
from pipelines.models.loader import LoadedModel, load_checkpoint
from pipelines.runtime.placement import MemoryPolicy

if TYPE_CHECKING:
    from pipelines.conditioning.encoder import PromptEncoder
    from pipelines.networks.embeddings import EmbeddingSet
    from pipelines.networks.lora import LoraTargets
    from pipelines.runtime.placement import Placement

log = logging.getLogger(__name__)


@dataclass
class ActiveModel:
    """A loaded checkpoint and what generation needs to know about it.

    The last four fields are built from the model on first use (by the engine and the network library) and are
    kept with it, so they are dropped with it when it leaves the RAM cache.
    """

    info: CheckpointInfo
    model: LoadedModel
    hash: str | None
    load_seconds: float = 0.0
    prompt_encoder: PromptEncoder | None = field(default=None, repr=False, compare=False)
    prompt_encoder_embeddings: EmbeddingSet | None = field(default=None, repr=False, compare=False)  # built with
    lora_targets: LoraTargets | None = field(default=None, repr=False, compare=False)
    placement: Placement | None = field(default=None, repr=False, compare=False)  # set by the memory policy

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def is_inpaint(self) -> bool:
        return self.model.is_inpaint


class PipelineManager:
    """Owns the loaded checkpoints. ``device_lock`` is held by whoever runs the device (one job at a time)."""

    def __init__(
        self,
        checkpoints_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        hash_cache: HashCache,
        ram_cache_size: int | None = None,
        allow_pickle: bool = False,
        memory: MemoryPolicy | None = None,
    ) -> None:
        self.checkpoints_dir = checkpoints_dir
        self.device = device
        self.dtype = dtype
        self.hashes = hash_cache
        self.ram_cache_size = ram_cache_size  # None: as many as fit in half the free RAM
        self.allow_pickle = allow_pickle
        self.memory = MemoryPolicy(device, dtype) if memory is None else memory  # decides where weights live
        self.device_lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[Path, ActiveModel] = OrderedDict()
        self._active: ActiveModel | None = None
        self._checkpoints: list[CheckpointInfo] = []
        self.refresh()

    # -- discovery ---------------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the checkpoints folder."""
        self._checkpoints = list_checkpoints(self.checkpoints_dir)
        return self._checkpoints

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        return list(self._checkpoints)

    def find(self, query: str) -> CheckpointInfo:
        try:
            return find_checkpoint(self._checkpoints, query, self.hashes)
        except EaselError:
            self.refresh()  # a file copied in since the last scan
            return find_checkpoint(self._checkpoints, query, self.hashes)

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    def cached_names(self) -> list[str]:
        return [m.info.name for m in self._cache.values()]

    # -- loading and switching ---------------------------------------------------------------------------
    def prepare(self, query: str) -> ActiveModel:
        """Make a checkpoint ready in RAM (or on the device if active) without holding the device lock."""
        info = self.find(query)
        if self._active and self._active.info.path == info.path:
            return self._active
        with self._load_lock:
            if info.path in self._cache:
                return self._cache[info.path]
            import time

            start = time.perf_counter()
            model = load_checkpoint(info.path, self.dtype, self.allow_pickle)
            loaded = ActiveModel(info, model, self.hashes.autov2(info.path), time.perf_counter() - start)
            self._cache[info.path] = loaded
            return loaded

    def activate(self, query: str) -> ActiveModel:
        """Switch the device to a checkpoint. Loads from disk first (outside the lock), then swaps under it."""
        wanted = self.prepare(query)
        with self.device_lock:
            if self._active is wanted:
                return wanted
            previous = self._active
            if previous is not None:
                self.memory.release(previous)
                self._cache[previous.info.path] = previous
                self._cache.move_to_end(previous.info.path)
            self._cache.pop(wanted.info.path, None)
            self.memory.place(wanted)
            self._active = wanted
            self._trim_cache(wanted)
            return wanted

    @contextmanager
    def borrowed(self, query: str) -> Iterator[ActiveModel]:
        """A second checkpoint on the device beside the active one for one job (A1111's refiner).

        Loaded into the RAM cache like any other (so the next job borrows it without a disk read), moved to the
        device for the job and back afterwards; the caller holds the device lock.
        """
        model = self.prepare(query)
        if model is self._active:
            yield model
            return
        with self.device_lock:
            self.memory.place(model)  # placed by the same policy as the active model (offload when it must)
            try:
                yield model
            finally:
                self.memory.release(model)

    def activate_first(self, names: Sequence[str]) -> tuple[ActiveModel | None, dict[str, str]]:
        """Activate the first of ``names`` that loads; also return the ones that did not, with why.

        For start-up: one unreadable file (a zero-byte partial download sorting first) must not keep Easel from
        starting on the next good checkpoint. Each failure is logged; None when none of them loads.
        """
        skipped: dict[str, str] = {}
        for name in names:
            try:
                return self.activate(name), skipped
            except Exception as exc:  # whatever one file does, the next may be fine
                reason = str(exc) if isinstance(exc, EaselError) else f"{type(exc).__name__}: {exc}"
                log.warning("skipped checkpoint %s, it could not be loaded: %s", name, reason)
                skipped[name] = reason
        return None, skipped

    def _trim_cache(self, active: ActiveModel) -> None:
        limit = self.ram_cache_size
        if limit is None:
            size = max(1, module_bytes(active.model.modules()))
            limit = max(1, int(available_ram_bytes() * 0.5 // size))
        while len(self._cache) > limit:
            path, dropped = self._cache.popitem(last=False)
            log.info("dropping %s from the RAM cache", dropped.info.name)

    def unload_all(self) -> None:
        with self.device_lock:
            self._cache.clear()
            self._active = None
