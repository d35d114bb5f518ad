"""What a request adds to a checkpoint: LoRAs from its prompt, a chosen VAE, textual-inversion embeddings.

``NetworkLibrary`` knows the folders (A1111 layout: ``models/Lora``, ``models/VAE``, and the embeddings folder)
and caches parsed files. ``NetworkLibrary.applied(active, request)`` is the engine's one hook: inside it the
model wears the request's LoRAs and VAE; on leaving, everything is back as it was, bit for bit. Problems a user
can cause (a missing or corrupt LoRA, an embedding that does not fit) become warnings, never failures.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.conditioning.encoder import PromptEncoder
from pipelines.conditioning.syntax import NetworkTag, extract_network_tags
from pipelines.errors import EaselError
from pipelines.models.checkpoints import HashCache
from pipelines.networks.embeddings import EmbeddingLibrary
from pipelines.networks.lora import LoraFile, LoraTargets, LoraUse, applied_loras, list_lora_files, read_lora
from pipelines.networks.vae import VaeCache, find_vae, is_automatic, list_vae_files

if TYPE_CHECKING:
    from pipelines.models.manager import ActiveModel
    from pipelines.requests import GenerationRequest

log = logging.getLogger(__name__)
LORA_KINDS = ("lora", "lyco")
SHORT_HASH = 12  # A1111 writes LoRA and embedding hashes as the first 12 hex digits of the SHA-256


@dataclass(frozen=True)
class NetworkFolders:
    lora: Path
    vae: Path
    embeddings: Path
    styles: Path

    @classmethod
    def from_models_dir(
        cls, models_dir: Path, embeddings: Path | None = None, styles: Path | None = None
    ) -> NetworkFolders:
        """A1111's layout: ``models/Lora``, ``models/VAE``, ``models/embeddings``; ``styles.csv`` beside ``models``."""
        return cls(
            models_dir / "Lora",
            models_dir / "VAE",
            embeddings or models_dir / "embeddings",
            styles or models_dir.parent / "styles.csv",
        )

    @classmethod
    def beside(
        cls, checkpoints_dir: Path, embeddings: Path | None = None, styles: Path | None = None
    ) -> NetworkFolders:
        """The same layout around ``models/Stable-diffusion``."""
        return cls.from_models_dir(checkpoints_dir.parent, embeddings, styles)


@dataclass
class NetworkUse:
    """What one request wore: warnings for the user and infotext fields (``Lora hashes``, ``VAE``...)."""

    warnings: list[str] = field(default_factory=list)
    infotext: dict[str, object] = field(default_factory=dict)
    loras: list[str] = field(default_factory=list)
    vae: str | None = None  # the VAE file worn (None: the checkpoint's own) and its AutoV2 hash
    vae_hash: str | None = None


def request_network_tags(request: GenerationRequest) -> list[NetworkTag]:
    """Tags from the prompt and the hires prompt (a LoRA named in both is applied once, at the prompt's weight)."""
    tags: dict[tuple[str, str], NetworkTag] = {}
    for text in (request.prompt, getattr(request, "hr_prompt", "") or ""):
        for tag in extract_network_tags(text)[1]:
            tags.setdefault((tag.kind, tag.name), tag)
    return list(tags.values())


class NetworkLibrary:
    """The LoRA, VAE and embedding folders, with small caches of parsed files."""

    def __init__(self, folders: NetworkFolders, hashes: HashCache, allow_pickle: bool = False) -> None:
        self.folders = folders
        self.hashes = hashes
        self.allow_pickle = allow_pickle
        self.embeddings = EmbeddingLibrary(folders.embeddings, allow_pickle)
        self.vaes = VaeCache()
        self._lock = threading.Lock()
        self._loras: OrderedDict[tuple, LoraFile] = OrderedDict()

    # -- listing ------------------------------------------------------------------------------------------
    def lora_files(self) -> dict[str, Path]:
        return list_lora_files(self.folders.lora)

    def vae_files(self) -> dict[str, Path]:
        return list_vae_files(self.folders.vae)

    def embedding_files(self) -> dict[str, Path]:
        """``name -> path`` of every file in the embeddings folder, readable or not (the name goes in prompts)."""
        return self.embeddings.files()

    # -- refreshing: listings rescan the folders on every call; these drop what was read from the files ----------
    def refresh_loras(self) -> None:
        """Forget parsed LoRAs, so a file replaced in place (same size and time) is read again."""
        with self._lock:
            self._loras.clear()

    def refresh_vaes(self) -> None:
        """Forget loaded VAEs (a request wearing one keeps it to the end)."""
        self.vaes = VaeCache(self.vaes.size)

    def refresh_embeddings(self) -> None:
        """Forget read embeddings: the next prompt encoder is built from the files as they are now."""
        self.embeddings.refresh()

    def short_hash(self, path: Path) -> str | None:
        digest = self.hashes.sha256(path)
        return digest[:SHORT_HASH] if digest else None

    # -- loading ------------------------------------------------------------------------------------------
    def find_lora(self, name: str) -> Path | None:
        files = self.lora_files()
        if name in files:
            return files[name]
        lowered = name.lower()
        return next((path for stem, path in files.items() if stem.lower() == lowered), None)

    def load_lora(self, name: str, path: Path) -> LoraFile:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime)
        with self._lock:
            if key in self._loras:
                self._loras.move_to_end(key)
                return self._loras[key]
        lora = read_lora(name, path, self.allow_pickle)
        with self._lock:
            self._loras[key] = lora
            while len(self._loras) > 8:
                self._loras.popitem(last=False)
        return lora

    @staticmethod
    def targets(active: ActiveModel) -> LoraTargets:
        if active.lora_targets is None:
            active.lora_targets = LoraTargets(active.model.unet, active.model.text_encoders)
        return active.lora_targets

    # -- per request --------------------------------------------------------------------------------------
    def _lora_uses(self, request: GenerationRequest, use: NetworkUse) -> list[LoraUse]:
        uses: list[LoraUse] = []
        hashes: list[str] = []
        for tag in request_network_tags(request):
            if tag.kind not in LORA_KINDS:
                use.warnings.append(f"<{tag.kind}:{tag.name}> was ignored: '{tag.kind}' networks are not supported")
                continue
            path = self.find_lora(tag.name)
            if path is None:
                use.warnings.append(f"LoRA '{tag.name}' not found in {self.folders.lora}: generated without it")
                continue
            try:
                lora = self.load_lora(tag.name, path)
            except EaselError as exc:
                use.warnings.append(f"{exc}: generated without it")
                continue
            unet = tag.weight if tag.unet_weight is None else tag.unet_weight
            uses.append(LoraUse(lora, tag.weight, unet))
            use.loras.append(tag.name)
            if digest := self.short_hash(path):
                hashes.append(f"{tag.name}: {digest}")
        if hashes:
            use.infotext["Lora hashes"] = ", ".join(hashes)
        return uses

    @contextmanager
    def _vae(self, active: ActiveModel, name: str | None, device, dtype, use: NetworkUse) -> Iterator[None]:
        if is_automatic(name):
            yield
            return
        assert name is not None
        path = find_vae(self.vae_files(), name)
        vae = self.vaes.load(path, active.family, dtype, device, self.allow_pickle)
        own = active.model.vae
        if vae.config.latent_channels != own.config.latent_channels:
            raise EaselError(
                f"VAE {path.name} has {vae.config.latent_channels} latent channels; this checkpoint needs "
                f"{own.config.latent_channels}"
            )
        use.vae, use.vae_hash = path.name, self.hashes.autov2(path)
        use.infotext["VAE hash"] = use.vae_hash
        use.infotext["VAE"] = use.vae
        active.model.vae = vae
        try:
            yield
        finally:
            active.model.vae = own

    @contextmanager
    def applied(self, active: ActiveModel, request: GenerationRequest, device, dtype) -> Iterator[NetworkUse]:
        """The model wearing the request's LoRAs and VAE for the ``with`` block (hold the device lock)."""
        use = NetworkUse()
        uses = self._lora_uses(request, use)
        with ExitStack() as stack:
            stack.enter_context(self._vae(active, getattr(request, "vae", None), device, dtype, use))
            if uses:
                stack.enter_context(applied_loras(uses, self.targets(active), use.warnings))
            yield use

    def embedding_notes(self, encoder: PromptEncoder, request: GenerationRequest, use: NetworkUse) -> None:
        """Warn about embeddings a prompt names that could not be used; record ``TI hashes`` of the ones used."""
        current = self.embeddings.current()
        texts = [request.prompt, request.negative_prompt, getattr(request, "hr_prompt", "") or ""]
        words = set(re.findall(r"[\w\-.]+", " ".join(texts)))
        for name, reason in {**current.failed, **encoder.skipped_embeddings}.items():
            if name in words:
                use.warnings.append(f"embedding '{name}' was not used: {reason}")
        used: list[str] = []
        for text in texts:
            for chunk in encoder.tokenize(text).chunks:
                used.extend(name for _, name in chunk.embeddings)
        hashes = []
        for name in dict.fromkeys(used):
            path = current.paths.get(name)
            if path is not None and (digest := self.short_hash(path)):
                hashes.append(f"{name}: {digest}")
        if hashes:
            use.infotext["TI hashes"] = ", ".join(hashes)
