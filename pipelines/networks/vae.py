"""VAE selection: ``models/VAE/*.safetensors`` in place of a checkpoint's own VAE, for one request.

A standalone VAE file holds the original-layout ``encoder.*`` / ``decoder.*`` / ``quant_conv`` keys (sometimes
behind ``first_stage_model.``), or diffusers' layout. Its config is derived from its shapes, with the scaling
factor of the checkpoint it decodes for (so an SDXL VAE works with SDXL latents). The engine swaps the module that
``LoadedModel.vae`` points at under its device lock and puts the checkpoint's own back afterwards.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from pipelines.errors import EaselError
from pipelines.models.architecture import derive_vae_config
from pipelines.models.ldm_layout import VAE_PREFIX
from pipelines.models.loader import PICKLE_SUFFIXES, load_state_dict

VAE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
AUTOMATIC = "Automatic"
NONE_NAMES = ("", "automatic", "none", "auto")


def list_vae_files(folder: Path) -> dict[str, Path]:
    """``file name -> path`` for every VAE below ``folder``; A1111 names a VAE by its file name."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*"), key=lambda p: p.as_posix().lower()):
        if path.is_file() and path.suffix.lower() in VAE_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.name, path)
    return found


def find_vae(files: dict[str, Path], query: str) -> Path:
    """By file name, stem, or case-insensitively; EaselError listing the choices otherwise."""
    query = query.strip()
    for match in (
        lambda name: name == query,
        lambda name: Path(name).stem == query,
        lambda name: name.lower() == query.lower() or Path(name).stem.lower() == query.lower(),
    ):
        hit = next((path for name, path in files.items() if match(name)), None)
        if hit is not None:
            return hit
    choices = ", ".join(files) or "the VAE folder is empty"
    raise EaselError(f"no VAE named '{query}' (available: {choices}; or use Automatic)")


def is_automatic(name: str | None) -> bool:
    return name is None or name.strip().lower() in NONE_NAMES


def build_vae(state: dict[str, torch.Tensor], family: str, dtype: torch.dtype) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a standalone VAE state dict of either layout."""
    if any(key.startswith("encoder.down_blocks.") for key in state):  # diffusers layout
        ldm_like = None
    else:
        ldm_like = {(key if key.startswith(VAE_PREFIX) else VAE_PREFIX + key): value for key, value in state.items()}
    if ldm_like is None:
        raise EaselError("diffusers-layout VAE files are not supported yet: use the original .safetensors VAE")
    shapes = {key: tuple(value.shape) for key, value in ldm_like.items()}
    config = derive_vae_config(shapes, family)
    with init_empty_weights(include_buffers=False):
        vae = AutoencoderKL.from_config(config)
    converted = convert_ldm_vae_checkpoint(ldm_like, vae.config)
    expected = set(vae.state_dict())
    missing = sorted(expected - converted.keys())
    if missing:
        raise EaselError(f"not a complete VAE (missing {', '.join(missing[:3])})")
    vae.load_state_dict({k: converted[k].to(dtype) for k in expected}, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


class VaeCache:
    """The last few VAEs loaded, by file, family, dtype and device."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, AutoencoderKL] = OrderedDict()

    def load(
        self, path: Path, family: str, dtype: torch.dtype, device: torch.device, allow_pickle: bool = False
    ) -> AutoencoderKL:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime, family, dtype, str(device))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            vae = build_vae(load_state_dict(path, allow_pickle), family, dtype)
        except EaselError as exc:
            raise EaselError(f"VAE {path.name}: {exc}") from exc
        except (KeyError, IndexError, RuntimeError, ValueError) as exc:
            raise EaselError(f"VAE {path.name}: unrecognised layout ({type(exc).__name__}: {exc})") from exc
        vae.to(device)
        with self._lock:
            self._items[key] = vae
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return vae
