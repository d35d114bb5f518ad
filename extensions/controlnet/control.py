"""ControlNet at run time: the model files, a small RAM cache, each request's prepared units, and the UNet wrapper.

Per request (the extension's model patch, around the whole run): each enabled unit's model is found by name in the
ControlNet folders, loaded once (shared by every unit that names it), checked against the active checkpoint's
architecture and moved to its device and dtype; each control image is preprocessed once. Per UNet call (the
model-call wrapper): each unit whose guidance window holds the current step adds its residuals, scaled by its
weight and its control mode, to the UNet's skip connections; several units' residuals sum.

Control modes, as sd-webui-controlnet combines ControlNet's two "guess mode" mechanisms: "Balanced" is the plain
residual on both halves of the CFG batch; "My prompt is more important" is soft injection (residual ``i`` of ``n``
scaled by ``0.825 ** (n - 1 - i)``, the middle block's at full weight) on both halves; "ControlNet is more
important" is soft injection on the conditional half only, the unconditional pass running without control.

Guidance window: at each model call the step is read off the call's sigma (its place in the run's sigmas, so the
second evaluation of a Heun step belongs to its step); the unit is on when ``start <= step / steps < end``, and on
through the last step when ``end`` is 1. So ``end`` 0 (or ``start`` 1) is no control at all.

ControlNet-Union and T2I-Adapter units take the same path; what differs for them is in ``adapters.py``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.errors import EaselError
from pipelines.models.controlnet import SUFFIXES, check_matches, load_controlnet
from pipelines.sampling.denoiser import ModelCall, ModelInputs, with_residuals

from . import adapters, masking, preprocessors, reference
from .units import HR_OPTIONS, Unit, parse_unit, pixel_perfect_resolution

SOFT_BASE = 0.825


@dataclass(frozen=True)
class ModelFile:
    name: str  # the file's stem, as sd-webui-controlnet names models
    path: Path

    @property
    def short_hash(self) -> str:
        """A1111's legacy model hash (sha256 of 64 KiB at 1 MiB), which sd-webui-controlnet shows as ``[hash]``."""
        target = self.path / "diffusion_pytorch_model.safetensors" if self.path.is_dir() else self.path
        digest = hashlib.sha256()
        with open(target, "rb") as handle:
            handle.seek(0x100000)
            digest.update(handle.read(0x10000))
        return digest.hexdigest()[:8]

    @property
    def label(self) -> str:
        return f"{self.name} [{self.short_hash}]"


def list_models(folders: Sequence[Path]) -> list[ModelFile]:
    """ControlNet files and diffusers folders under ``folders``, by name; the first of two equal names wins."""
    found: dict[str, ModelFile] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.name.startswith("."):
                continue
            if path.is_file() and path.suffix.lower() in SUFFIXES and path.parent.name != path.stem:
                if (path.parent / "config.json").is_file() and path.stem == "diffusion_pytorch_model":
                    continue  # a diffusers folder's weights: listed as the folder
                found.setdefault(path.stem, ModelFile(path.stem, path))
            elif path.is_dir() and (path / "diffusion_pytorch_model.safetensors").is_file():
                found.setdefault(path.name, ModelFile(path.name, path))
    return sorted(found.values(), key=lambda m: m.name.lower())


def find_model(folders: Sequence[Path], name: str) -> ModelFile:
    """A model by its name, with or without sd-webui-controlnet's `` [hash]``; EaselError listing the choices."""
    wanted = name.strip()
    if wanted.endswith("]") and " [" in wanted:
        wanted = wanted[: wanted.rindex(" [")].strip()
    models = list_models(folders)
    for model in models:
        if model.name == wanted or model.name.lower() == wanted.lower():
            return model
    names = ", ".join(m.name for m in models) or "none installed"
    where = ", ".join(str(f) for f in folders) or "no ControlNet folder configured"
    raise EaselError(f"ControlNet model '{name}' not found (in {where}: {names})")


class ModelCache:
    """Loaded ControlNets, least recently used dropped first; one copy per file whatever the units and modes."""

    def __init__(self, size: int = 2) -> None:
        self.size = max(1, size)
        self._models: OrderedDict[tuple[str, float, int], tuple[Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, file: ModelFile, unet_config: Mapping[str, Any], dtype: torch.dtype, allow_pickle: bool) -> Any:
        target = file.path / "diffusion_pytorch_model.safetensors" if file.path.is_dir() else file.path
        stat = target.stat()
        key = (str(file.path), stat.st_mtime, stat.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                model, config = self._models[key]
                check_matches(config, unet_config)
                if model.dtype != dtype:
                    model.to(dtype=dtype)
                return model
        model = load_controlnet(file.path, unet_config, dtype, allow_pickle)
        with self._lock:
            self._models[key] = (model, dict(model.config))
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return model

    def loaded(self) -> list[Any]:
        with self._lock:
            return [m for m, _ in self._models.values()]


@dataclass
class Prepared:
    """One unit ready to run: its model on the device, its control map, and the hint tensors made from it."""

    unit: Unit
    model: Any  # None for the modules that need no ControlNet (reference_*)
    detected: Image.Image  # the preprocessed map, before it is fitted to a size (RGBA: a mask in alpha)
    hints: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    extra: dict[Any, Any] = field(default_factory=dict)  # per model kind (adapters.py): union type, T2I features
    keep: Any = None  # masking.KeepOutside: inpaint_only keeping the picture outside its mask
    sharing: Any = None  # reference.ReferenceSharing: the reference_* units' attention sharing on the UNet

    def hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[1, 3, H, W]`` in 0..1 at the pixel size of the latents being denoised (hires passes differ)."""
        key = (height, width)
        if key not in self.hints:
            array = masking.hint_array(self.detected, width, height, self.unit.resize_mode)
            self.hints[key] = torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)
        return self.hints[key]


def parse_units(values: Mapping[str, Any], count: int) -> list[Unit]:
    units = [parse_unit(values.get(f"unit_{i}"), i) for i in range(count)]
    return [u for u in units if u is not None]


def detect(
    unit: Unit, image: Image.Image, width: int, height: int, mask: Image.Image | None = None, seed: int = 0
) -> Image.Image:
    """The unit's preprocessor on its image, at its processor resolution (or pixel perfect for this size)."""
    res = unit.processor_res
    if unit.pixel_perfect:
        res = pixel_perfect_resolution(image, width, height, unit.resize_mode)
    return preprocessors.run(unit.module, image, res, unit.threshold_a, unit.threshold_b, mask, seed)


def step_fraction(sigmas: torch.Tensor, sigma: torch.Tensor) -> float:
    """The step a model call belongs to, as a fraction of the run's steps, from its noise level."""
    steps = max(1, len(sigmas) - 1)
    level = float(sigma.max()) * (1 - 1e-4)
    index = int((sigmas[:-1].float() >= level).sum().item()) - 1
    return min(max(index, 0), steps - 1) / steps


def active(unit: Unit, fraction: float) -> bool:
    if unit.weight == 0 or unit.guidance_end <= unit.guidance_start:
        return False
    return unit.guidance_start <= fraction and (fraction < unit.guidance_end or unit.guidance_end >= 1.0)


def soft_scales(count: int, weight: float) -> list[float]:
    """Soft injection: the deepest residual (the middle block's, last) at full weight, each shallower one 0.825x."""
    return [weight * SOFT_BASE ** float(count - 1 - i) for i in range(count)]


def _rows(inputs: ModelInputs, cond_only: bool) -> slice | None:
    """Which rows of this UNet batch get the control: all, the conditional half, or none (the uncond call)."""
    state = inputs.state
    if not cond_only or state is None or state.conditioning.uncond is None:
        return slice(None)
    batch = state.x.shape[0]
    rows = inputs.sample.shape[0]
    if rows == 2 * batch:  # [cond, uncond] in one call: the first half is the conditional one
        return slice(0, batch)
    # separate calls (different token counts): this is the conditional one if its tokens are the prompt's
    return slice(None) if inputs.encoder_hidden_states.shape[1] == state.conditioning.cond.shape[1] else None


def residuals(prepared: Prepared, inputs: ModelInputs) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """One unit's residuals for this call (zeros where the unit does not apply), or None when it adds nothing."""
    unit = prepared.unit
    cond_only = unit.control_mode == 2
    rows = _rows(inputs, cond_only)
    if rows is None:
        return None
    sample = inputs.sample
    model = prepared.model
    x = sample[rows][:, : model.config.in_channels]
    hint = prepared.hint(sample.shape[-2] * 8, sample.shape[-1] * 8, sample.device, sample.dtype)
    added = None
    if inputs.added_cond_kwargs is not None:
        added = {k: v[rows] for k, v in inputs.added_cond_kwargs.items()}
    with torch.no_grad():
        down, mid = model(
            x,
            inputs.timestep[rows],
            encoder_hidden_states=inputs.encoder_hidden_states[rows],
            **adapters.control_inputs(prepared, hint.expand(x.shape[0], -1, -1, -1)),
            added_cond_kwargs=added,
            return_dict=False,
        )
    outputs = [*down, mid]
    scales = soft_scales(len(outputs), unit.weight) if unit.control_mode != 0 else [unit.weight] * len(outputs)
    outputs = [o * s for o, s in zip(outputs, scales, strict=True)]
    if x.shape[0] != sample.shape[0]:  # the unconditional half runs without control
        outputs = [torch.cat([o, torch.zeros_like(o)]) for o in outputs]
    return outputs[:-1], outputs[-1]


class ControlNetRuntime:
    """The extension's state across requests: the model cache and the units prepared for the running request."""

    def __init__(self, folders: Any, allow_pickle: Any, unit_count: int, cache_size: int = 2) -> None:
        self._folders = folders  # () -> list[Path]: read when used, since the server binds them after setup
        self._allow_pickle = allow_pickle
        self.unit_count = unit_count
        self.cache = ModelCache(cache_size)
        self._prepared: dict[int, tuple[Any, list[Prepared]]] = {}
        self._declared: tuple[Any, dict[str, Any]] | None = None  # the request's models, placed by the memory policy

    def modules(self, request: Any, view: Any) -> list[Any]:
        """The request's ControlNets, loaded in RAM, for the memory policy to count and place (``request_modules``).

        Kept for the request's patch, which then leaves their placement to the policy (under model offload they
        come onto the device with the UNet and leave with it).
        """
        values, units = self.units(request)
        models: dict[str, Any] = {}
        for unit in units:
            if preprocessors.find(unit.module).model_free:  # reference_*: attention sharing, no model to place
                continue
            file = find_model(self.folders(), unit.model)
            if str(file.path) not in models:
                models[str(file.path)] = self.cache.get(file, view.unet.config, view.dtype, bool(self._allow_pickle()))
        self._declared = (values, models) if models else None
        return list(models.values())

    def folders(self) -> list[Path]:
        return list(self._folders())

    def units(self, request: Any) -> tuple[Any, list[Unit]]:
        values = (getattr(request, "extensions", None) or {}).get("controlnet") or {}
        return values, parse_units(values, self.unit_count)

    @contextmanager
    def patch(self, request: Any, view: Any) -> Iterator[None]:
        """Around one request: load and place the units' models, preprocess their images; put models back after."""
        values, units = self.units(request)
        if not units:
            yield
            return
        if request.mode == "txt2img" and any(u.image is None for u in units):
            missing = next(u for u in units if u.image is None)
            raise EaselError(f"ControlNet unit {missing.index}: give a control image (or disable the unit)")
        init = getattr(request, "init_image", None)
        device, dtype = view.device, view.dtype
        prepared: list[Prepared] = []
        placed: list[Any] = []
        declared = self._declared[1] if self._declared is not None and self._declared[0] is values else {}
        stack = ExitStack()
        try:
            for unit in units:
                model = None
                if not preprocessors.find(unit.module).model_free:
                    file = find_model(self.folders(), unit.model)
                    model = declared.get(str(file.path))
                    if model is None:  # not given to the memory policy (a direct call): placed here, as before
                        model = self.cache.get(file, view.unet.config, dtype, bool(self._allow_pickle()))
                    if model not in declared.values() and all(model is not other for other in placed):
                        model.to(device)
                        placed.append(model)
                image = unit.image if unit.image is not None else init
                if image is None:
                    raise EaselError(f"ControlNet unit {unit.index}: give a control image (or disable the unit)")
                mask = masking.unit_mask(unit, request)
                detected = detect(unit, image, request.width, request.height, mask, request.seed)
                keep = masking.keep_outside(unit, image, mask, request, view.vae)
                prepared.append(Prepared(unit, model, detected, keep=keep))
                if model is not None:
                    adapters.prepare(prepared[-1])
            shared = [p for p in prepared if p.unit.module in reference.MODULES and p.unit.weight > 0]
            if shared:  # their UNet layers wrapped for this request, and put back on the way out
                sharing = stack.enter_context(reference.sharing(view, request, [p.unit for p in shared]).installed())
                for item in shared:
                    item.sharing = sharing
            self._prepared[id(values)] = (values, prepared)
            yield
        finally:
            stack.close()
            self._prepared.pop(id(values), None)
            if device.type != "cpu":
                for model in placed:
                    model.to("cpu")

    def prepared(self, request: Any) -> list[Prepared]:
        values = (getattr(request, "extensions", None) or {}).get("controlnet")
        entry = self._prepared.get(id(values)) if values is not None else None
        return entry[1] if entry is not None and entry[0] is values else []

    def model_call(self, request: Any, call: ModelCall, inputs: ModelInputs) -> torch.Tensor:
        prepared = self.prepared(request)
        state = inputs.state
        if not prepared or state is None or inputs.sigma is None:
            return call(inputs)
        fraction = step_fraction(state.sigmas, inputs.sigma)
        hires = _is_hires(request, inputs)
        plain, shared = inputs, []
        for unit in prepared:
            option = HR_OPTIONS[unit.unit.hr_option]
            if (hires and option == "Low res only") or (not hires and option == "High res only" and request.enable_hr):
                continue
            if not active(unit.unit, fraction):
                continue
            if unit.sharing is not None:
                shared.append(unit)
                continue
            if unit.model is None:
                continue
            if adapters.is_t2i(unit.model):  # features into the down blocks, not residuals on the skips
                inputs = adapters.add_features(unit, inputs, _rows(inputs, unit.unit.control_mode == 2))
                continue
            added = residuals(unit, inputs)
            if added is not None:
                inputs = with_residuals(inputs, *added)
        if shared:
            return shared[0].sharing.call(call, plain, inputs, shared, hires)
        return call(inputs)


def _is_hires(request: Any, inputs: ModelInputs) -> bool:
    """The hires fix's second pass: latents of another size than the request's first pass."""
    if request.mode != "txt2img" or not getattr(request, "enable_hr", False):
        return False
    height, width = inputs.sample.shape[-2] * 8, inputs.sample.shape[-1] * 8
    return (height, width) != (request.height, request.width)
