"""Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT and the rest spandrel knows) from A1111's folders.

Files are found in ``models/ESRGAN``, ``models/RealESRGAN``, ``models/SwinIR``, ``models/DAT`` and ``models/HAT`` and
listed by name as A1111 does: the file's stem, or for Real-ESRGAN's published files A1111's own names ("R-ESRGAN 4x+"),
which infotexts and API clients send. ``.safetensors`` are read as tensors; ``.pth``/``.pt`` pickles weights-only
(``load_pickle_weights``: a file that needs code to unpickle is refused, never run). spandrel detects the
architecture and scale from the state dict. Loaded models wait on the CPU in a small LRU; each run moves one to the
engine's device and back (nothing stays beside the checkpoint in VRAM). The caller holds the device: the engine's
queue turn and device lock (``pipelines.upscalers.extras`` for the Extras tab; generation already holds them).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from pipelines.errors import EaselError
from pipelines.models.loader import load_pickle_weights
from pipelines.runtime.jobs import Job
from pipelines.sampling.hires import HIRES_UPSCALERS, HiresSize, PixelUpscale, upscale_image
from pipelines.upscalers.spandrel_import import TORCHVISION_ARCHITECTURES, load_spandrel, torchvision_available
from pipelines.upscalers.tiles import tile_count, tiled_call

log = logging.getLogger(__name__)
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")
DEFAULT_TILE, DEFAULT_TILE_OVERLAP = 192, 8  # A1111's ESRGAN_tile and ESRGAN_tile_overlap
MAX_TILE = 2048
MAX_PASSES = 3  # as A1111: a 2x model reaches at most 8x; the rest is a Lanczos resize
CACHE_SIZE = 2
UPSCALER_PURPOSES = ("SR", "Restoration")  # spandrel's: super-resolution, and 1x restoration models (denoise, JPEG)
REAL_ESRGAN_NAMES = {
    "realesrgan_x4plus": "R-ESRGAN 4x+",
    "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
    "realesrgan_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
}
"""Real-ESRGAN's published file stems (lower case) -> the names A1111 lists them by."""
_SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:x(\d)(?!\d)|(\d)x)", re.IGNORECASE)


class UpscaleInterrupted(EaselError):
    """The job was interrupted between two tiles."""


@dataclass(frozen=True)
class UpscalerFolders:
    """A1111's upscaler folders (each overridable by its own command-line flag)."""

    esrgan: Path
    realesrgan: Path
    swinir: Path
    dat: Path
    hat: Path

    @classmethod
    def from_models_dir(cls, models_dir: Path, **overrides: Path | None) -> UpscalerFolders:
        """``models/ESRGAN`` and friends; ``overrides`` (``esrgan=...``) replace single folders."""
        defaults = {
            "esrgan": models_dir / "ESRGAN",
            "realesrgan": models_dir / "RealESRGAN",
            "swinir": models_dir / "SwinIR",
            "dat": models_dir / "DAT",
            "hat": models_dir / "HAT",
        }
        return cls(**{key: overrides.get(key) or path for key, path in defaults.items()})

    @classmethod
    def beside(cls, checkpoints_dir: Path) -> UpscalerFolders:
        """The same layout around ``models/Stable-diffusion``."""
        return cls.from_models_dir(checkpoints_dir.parent)

    def kinds(self) -> list[tuple[str, Path]]:
        """``(A1111's upscaler class name, folder)``; the name is what ``/upscalers`` reports as ``model_name``."""
        return [
            ("ESRGAN", self.esrgan),
            ("RealESRGAN", self.realesrgan),
            ("SwinIR", self.swinir),
            ("DAT", self.dat),
            ("HAT", self.hat),
        ]


@dataclass(frozen=True)
class UpscalerFile:
    name: str
    path: Path
    kind: str  # "ESRGAN", "RealESRGAN", ... (the folder it was found in)


def guess_scale(name: str) -> int:
    """The scale a file's name announces ("4x-UltraSharp", "DAT_x3"), else 4 (A1111's default for listing)."""
    match = _SCALE_IN_NAME.search(name)
    return int(match.group(1) or match.group(2)) if match else 4


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


class UpscalerLibrary:
    """The upscaler folders, a small cache of loaded models, and tiled runs of them on one device."""

    def __init__(
        self,
        folders: UpscalerFolders,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int = DEFAULT_TILE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> None:
        self.folders = folders
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile = tile  # A1111's ESRGAN_tile (0: no tiling)
        self.tile_overlap = tile_overlap
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, Any] = OrderedDict()  # (path, size, mtime) -> spandrel descriptor
        self._scales: dict[tuple, int] = {}  # detected scales outlive the cache: the listing shows them

    # -- listing (the folders are rescanned on every call: a listdir each) --------------------------------------
    def files(self) -> dict[str, UpscalerFile]:
        """Every model upscaler by name, in folder order; a name found twice keeps the first and says so."""
        found: dict[str, UpscalerFile] = {}
        for kind, folder in self.folders.kinds():
            if not folder.is_dir():
                continue
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
            for path in paths:
                name = REAL_ESRGAN_NAMES.get(path.stem.lower(), path.stem) if kind == "RealESRGAN" else path.stem
                if name in found or name in BUILTIN_UPSCALERS:
                    log.warning("upscaler %s: the name %r is taken by %s; skipped", path, name, found.get(name))
                    continue
                found[name] = UpscalerFile(name, path, kind)
        return found

    def names(self) -> list[str]:
        """What the Extras tab and ``/upscalers`` offer: None, Lanczos, Nearest, then the models."""
        return [*BUILTIN_UPSCALERS, *self.files()]

    def hires_names(self) -> list[str]:
        """The hires fix's upscalers: the latent modes and the pixel ones, then the models."""
        return [*HIRES_UPSCALERS, *self.files()]

    def find(self, name: str) -> UpscalerFile:
        files = self.files()
        if name in files:
            return files[name]
        lowered = name.lower()
        match = next((f for n, f in files.items() if n.lower() == lowered), None)
        if match is None:
            folders = ", ".join(str(folder) for _, folder in self.folders.kinds())
            raise EaselError(f"unknown upscaler '{name}': no such model in {folders}")
        return match

    def scale_of(self, file: UpscalerFile) -> int:
        """The detected scale once the model was loaded, else what its name says."""
        key = self._key(file.path)
        with self._lock:
            return self._scales.get(key, guess_scale(file.name))

    def items(self) -> list[dict[str, Any]]:
        """A1111's ``/upscalers`` entries: name, model_name (the upscaler kind), model_path, model_url, scale."""
        builtin = [
            {"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for n in BUILTIN_UPSCALERS
        ]
        models = [
            {
                "name": f.name,
                "model_name": f.kind,
                "model_path": str(f.path),
                "model_url": None,
                "scale": self.scale_of(f),
            }
            for f in self.files().values()
        ]
        return builtin + models

    def refresh(self) -> None:
        """Forget loaded models, so a file replaced in place is read again."""
        with self._lock:
            self._models.clear()

    # -- loading ---------------------------------------------------------------------------------------------
    @staticmethod
    def _key(path: Path) -> tuple:
        try:
            stat = path.stat()
        except OSError:
            return (str(path), -1, -1)
        return (str(path), stat.st_size, stat.st_mtime_ns)

    def load(self, file: UpscalerFile) -> Any:
        """The spandrel model descriptor of ``file`` (on the CPU), from the cache or the disk."""
        key = self._key(file.path)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        descriptor = read_upscaler(file.path)
        with self._lock:
            self._models[key] = descriptor
            self._scales[key] = int(descriptor.scale)
            while len(self._models) > CACHE_SIZE:
                self._models.popitem(last=False)
        return descriptor

    # -- running (the caller holds the device) ----------------------------------------------------------------
    def passes(self, name: str, size: tuple[int, int], target: tuple[int, int]) -> list[tuple[int, int]]:
        """Input sizes of each model pass from ``size`` until ``target`` is covered (at most MAX_PASSES)."""
        scale = self.scale_of(self.find(name))
        sizes: list[tuple[int, int]] = []
        width, height = size
        for _ in range(MAX_PASSES):
            if (width >= target[0] and height >= target[1]) or (sizes and scale == 1):
                break
            sizes.append((width, height))
            width, height = width * scale, height * scale
        return sizes or [size]

    def tiles_for(self, name: str, size: tuple[int, int], target: tuple[int, int]) -> int:
        """Model calls an upscale of ``size`` to ``target`` makes (progress is counted in tiles)."""
        return sum(tile_count(w, h, self.tile, self.tile_overlap) for w, h in self.passes(name, size, target))

    def upscale(
        self,
        image: Image.Image,
        target: tuple[int, int],
        name: str,
        after_tile: Callable[[], None] | None = None,
    ) -> Image.Image:
        """``image`` through model ``name`` until it covers ``target`` (A1111's rule), then Lanczos to ``target``."""
        file = self.find(name)
        descriptor = self.load(file)
        scale = int(descriptor.scale)
        current = image.convert("RGB")
        with self._on_device(descriptor) as (model, dtype):
            for _ in range(MAX_PASSES):
                if current.width >= target[0] and current.height >= target[1]:
                    break
                current = self._run(model, dtype, scale, current, after_tile, file.name)
                if scale == 1:
                    break
        if current.size != tuple(target):
            current = current.resize(tuple(target), Image.Resampling.LANCZOS)
        return current

    def _run(
        self,
        model: Any,
        dtype: torch.dtype,
        scale: int,
        image: Image.Image,
        after_tile: Callable[[], None] | None,
        name: str,
    ) -> Image.Image:
        def call(pixels: torch.Tensor) -> torch.Tensor:
            out = model(pixels.to(self.device, dtype))
            expected = (pixels.shape[2] * scale, pixels.shape[3] * scale)
            if tuple(out.shape[2:]) != expected or out.shape[1] != 3:
                raise EaselError(f"upscaler {name} returned {tuple(out.shape)}; a 3-channel {expected} was expected")
            return out.float().cpu()

        tile = self.tile if model.tiling.name != "INTERNAL" else 0  # such models tile (or need the whole) themselves
        with torch.inference_mode():
            out = tiled_call(call, _pil_to_tensor(image), scale, tile, self.tile_overlap, after_tile)
        return _tensor_to_pil(out)

    def hires_upscale(self, job: Job | None = None) -> PixelUpscale:
        """The hires fix's pixel upscale: PIL for None/Lanczos/Nearest, the model (tiled) for the rest.

        An interrupt between tiles finishes the picture with Lanczos, so the second pass starts and stops at once.
        """

        def after_tile() -> None:
            if job is not None and job.interrupted:
                raise UpscaleInterrupted("interrupted")

        def model_resize(image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
            try:
                return self.upscale(image, size, name, after_tile)
            except UpscaleInterrupted:
                return image.resize(size, Image.Resampling.LANCZOS)

        def upscale(image: Image.Image, size: HiresSize, name: str) -> Image.Image:
            return upscale_image(image, size, name, model_resize)

        return upscale

    def _on_device(self, descriptor: Any) -> _OnDevice:
        return _OnDevice(descriptor, self.device, self._dtype_for(descriptor))

    def _dtype_for(self, descriptor: Any) -> torch.dtype:
        if self.device.type == "cpu":
            return torch.float32
        if self.dtype == torch.bfloat16 and descriptor.supports_bfloat16:
            return torch.bfloat16
        if self.dtype in (torch.float16, torch.bfloat16) and descriptor.supports_half:
            return torch.float16
        return torch.float32


class _OnDevice:
    """The model on the run's device and dtype inside the block; back on the CPU in fp32 after, whatever happened."""

    def __init__(self, descriptor: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.descriptor, self.device, self.dtype = descriptor, device, dtype

    def __enter__(self) -> tuple[Any, torch.dtype]:
        self.descriptor.to(self.device, self.dtype)
        return self.descriptor, self.dtype

    def __exit__(self, *exc: object) -> None:
        self.descriptor.to(torch.device("cpu"), torch.float32)


def _read_state_dict(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EaselError(f"{path.name}: not a readable .safetensors file ({exc})") from exc
    data = load_pickle_weights(path)  # weights only: a pickle that names code is refused, never run
    if not isinstance(data, dict):
        raise EaselError(f"{path.name}: holds no state dict")
    return data


def read_upscaler(path: Path) -> Any:
    """A spandrel descriptor for the upscaler file at ``path``; EaselError naming what is wrong with it."""
    spandrel = load_spandrel()
    state = spandrel.canonicalize_state_dict(_read_state_dict(path))
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise EaselError(f"{path.name}: holds no tensors")
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise EaselError(
            f"{path.name}: not an architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT...)"
        ) from None
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError) as exc:
        raise EaselError(f"{path.name}: its weights do not fit the architecture detected ({exc})"[:600]) from exc
    arch = descriptor.architecture.id
    if arch in TORCHVISION_ARCHITECTURES and not torchvision_available():
        raise EaselError(f"{path.name} is a {arch} model, which needs torchvision; Easel does not install it")
    if descriptor.purpose not in UPSCALER_PURPOSES or not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise EaselError(f"{path.name} is a {arch} model for {descriptor.purpose}, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise EaselError(f"{path.name}: a {descriptor.input_channels}-channel model; upscalers need RGB (3 channels)")
    descriptor.model.eval().requires_grad_(False)
    return descriptor
