"""LoRA files (kohya and diffusers/PEFT layouts) applied to a loaded model for one request, then undone exactly.

A LoRA stores, per patched layer, two low-rank factors ``down`` ([rank, in, (kh, kw)]) and ``up`` ([out, rank,
(1, 1)]) and optionally ``alpha``. Applying it adds ``multiplier * (up @ down) * alpha / rank`` to the layer's
weight. The engine applies LoRAs in place under its device lock and restores the exact original tensors in a
``finally`` (copies of the touched weights are kept), so other tabs and the next request see the base model bit
for bit.

Layer names: kohya writes the diffusers/HF module path with ``.`` replaced by ``_`` behind ``lora_unet_`` /
``lora_te_`` / ``lora_te1_`` / ``lora_te2_``; for SDXL its UNet names follow the original LDM layout
(``input_blocks_4_1_...``). diffusers/PEFT files use dotted paths behind ``unet.`` / ``text_encoder.`` /
``text_encoder_2.``. ``LoraTargets`` maps every spelling to the model's modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.errors import EaselError
from pipelines.models.ldm_layout import UNET_PREFIX, unet_to_ldm
from pipelines.models.loader import PICKLE_SUFFIXES, load_state_dict

LORA_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

# (regex on the part after the component prefix, role). The module path is group 1.
_DIFFUSERS_SUFFIXES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), role)
    for pattern, role in (
        (r"(.+)\.lora_A(?:\.default)?\.weight", "down"),
        (r"(.+)\.lora_B(?:\.default)?\.weight", "up"),
        (r"(.+)\.lora\.down\.weight", "down"),
        (r"(.+)\.lora\.up\.weight", "up"),
        (r"(.+)\.lora_linear_layer\.down\.weight", "down"),
        (r"(.+)\.lora_linear_layer\.up\.weight", "up"),
        (r"(.+)\.lora_down\.weight", "down"),
        (r"(.+)\.lora_up\.weight", "up"),
        (r"(.+)\.alpha", "alpha"),
    )
)
# Old diffusers attention-processor LoRAs: "<attn>.processor.to_q_lora.down.weight" patches "<attn>.to_q".
_PROCESSOR = re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight")
_KOHYA = re.compile(r"(lora_(?:unet|te\d?)_\w+?)\.(lora_down\.weight|lora_up\.weight|alpha)")


@dataclass
class LoraLayer:
    """One patched layer: its target key (see ``LoraTargets``) and factors."""

    target: str
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


@dataclass
class LoraFile:
    """A parsed LoRA file: its layers by target key, and the keys this loader does not understand."""

    name: str
    path: Path
    layers: dict[str, LoraLayer]
    unsupported: list[str] = field(default_factory=list)


def list_lora_files(folder: Path) -> dict[str, Path]:
    """``name -> path`` for every LoRA below ``folder`` (recursively); the name is the file stem, as in A1111."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*"), key=lambda p: p.as_posix().lower()):
        if path.is_file() and path.suffix.lower() in LORA_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.stem, path)
    return found


def _component_and_rest(key: str) -> tuple[str, str] | None:
    for prefix, component in (("text_encoder_2.", "te2"), ("text_encoder.", "te"), ("unet.", "unet")):
        if key.startswith(prefix):
            return component, key[len(prefix) :]
    for prefix in ("base_model.model.", ""):  # PEFT files of a bare UNet
        if key.startswith(prefix) and (".lora_A" in key or ".lora_B" in key):
            return "unet", key[len(prefix) :]
    return None


def _diffusers_target(key: str) -> tuple[str, str] | None:
    """``(target, role)`` for a diffusers/PEFT key, target being ``"<component>:<dotted module path>"``."""
    split = _component_and_rest(key)
    if split is None:
        return None
    component, rest = split
    if m := _PROCESSOR.fullmatch(rest):
        module = f"{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else "")
        return f"{component}:{module}", m[3]
    for pattern, role in _DIFFUSERS_SUFFIXES:
        if m := pattern.fullmatch(rest):
            return f"{component}:{m[1]}", role
    return None


def parse_lora_state_dict(name: str, path: Path, state: Mapping[str, torch.Tensor]) -> LoraFile:
    """Group a LoRA state dict's tensors by layer. Raises EaselError when nothing in it is a LoRA layer."""
    layers: dict[str, LoraLayer] = {}
    unsupported: list[str] = []
    for key, tensor in state.items():
        if m := _KOHYA.fullmatch(key):
            target, role = m[1], m[2].split(".")[0].removeprefix("lora_")
        elif found := _diffusers_target(key):
            target, role = found
        else:
            unsupported.append(key)
            continue
        layer = layers.setdefault(target, LoraLayer(target))
        if role == "alpha":
            layer.alpha = float(tensor.float().reshape(-1)[0])
        elif role == "down":
            layer.down = tensor
        else:
            layer.up = tensor
    incomplete = [t for t, layer in layers.items() if layer.down is None or layer.up is None]
    for target in incomplete:
        unsupported.append(target)
        del layers[target]
    if not layers:
        raise EaselError(
            f"LoRA '{name}' ({path.name}) holds no LoRA layers this loader understands "
            "(kohya 'lora_down/lora_up' or diffusers 'lora_A/lora_B' keys)"
        )
    return LoraFile(name, path, layers, unsupported)


def read_lora(name: str, path: Path, allow_pickle: bool = False) -> LoraFile:
    """Read and parse one LoRA file; unreadable or foreign files raise EaselError naming the file."""
    try:
        state = load_state_dict(path, allow_pickle)
    except EaselError as exc:
        raise EaselError(f"LoRA '{name}': {exc}") from exc
    return parse_lora_state_dict(name, path, state)


class LoraTargets:
    """Every name a LoRA may use for a weight of this model -> ``(kind, module)``, kind ``unet`` or ``te``."""

    def __init__(self, unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module]) -> None:
        self.modules: dict[str, tuple[str, torch.nn.Module]] = {}
        unet_modules = dict(unet.named_modules())
        for name, module in unet_modules.items():
            if _patchable(module):
                self._add("unet", module, (f"unet:{name}", "lora_unet_" + name.replace(".", "_")))
        for ldm_name, name in _ldm_unet_names(unet).items():
            module = unet_modules.get(name)
            if module is not None and _patchable(module):
                self._add("unet", module, ("lora_unet_" + ldm_name.replace(".", "_"),))
        if len(text_encoders) == 1:
            te_prefixes = [("te", ("lora_te_", "lora_te1_"))]
        else:
            te_prefixes = [("te", ("lora_te1_",)), ("te2", ("lora_te2_",))]
        for text_encoder, (component, kohya_prefixes) in zip(text_encoders, te_prefixes, strict=False):
            for name, module in text_encoder.named_modules():
                if not _patchable(module):
                    continue
                full = name if name.startswith("text_model.") else f"text_model.{name}"
                short = full.removeprefix("text_model.")
                names = [f"{component}:{full}", f"{component}:{short}"]
                names += [prefix + full.replace(".", "_") for prefix in kohya_prefixes]
                self._add("te", module, tuple(names))

    def _add(self, kind: str, module: torch.nn.Module, names: tuple[str, ...]) -> None:
        for name in names:
            self.modules.setdefault(name, (kind, module))

    def find(self, target: str) -> tuple[str, torch.nn.Module] | None:
        return self.modules.get(target)


def _patchable(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and isinstance(weight, torch.Tensor)


def _ldm_unet_names(unet: torch.nn.Module) -> dict[str, str]:
    """Original-layout module path -> diffusers module path, for SDXL kohya LoRAs (LDM names)."""
    params = {k: v for k, v in unet.state_dict().items() if k.endswith(".weight")}
    try:
        ldm = unet_to_ldm(params, unet.config)
    except (ValueError, KeyError, TypeError):
        return {}
    names: dict[str, str] = {}
    for diffusers_key, ldm_key in zip(params, ldm, strict=True):  # unet_to_ldm keeps the order
        names[ldm_key.removeprefix(UNET_PREFIX).removesuffix(".weight")] = diffusers_key.removesuffix(".weight")
    return names


def lora_delta(layer: LoraLayer, weight_shape: torch.Size) -> torch.Tensor:
    """``(up @ down) * alpha / rank`` in float32, shaped like the weight it patches."""
    assert layer.down is not None and layer.up is not None
    down = layer.down.float()
    up = layer.up.float()
    rank = down.shape[0]
    scale = (layer.alpha / rank) if layer.alpha is not None else 1.0
    if down.dim() == 4 and down.shape[2:] != (1, 1):  # a 3x3 conv LoRA: up is 1x1
        delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    else:
        delta = up.flatten(1) @ down.flatten(1)
    if delta.numel() != torch.Size(weight_shape).numel():
        raise ValueError(f"shape {tuple(delta.shape)} does not fit weight {tuple(weight_shape)}")
    return delta.reshape(weight_shape) * scale


@dataclass
class LoraUse:
    """A LoRA file to apply with its text-encoder and UNet multipliers."""

    lora: LoraFile
    te_multiplier: float
    unet_multiplier: float


@contextmanager
def applied_loras(uses: Sequence[LoraUse], targets: LoraTargets, warnings: list[str]) -> Iterator[None]:
    """Patch the model's weights with ``uses`` for the ``with`` block, then put back the original tensors exactly.

    Layers that match no module of this model, or whose shapes do not fit, are skipped and reported in
    ``warnings`` (a LoRA for another model family matches nothing and is skipped as a whole).
    """
    deltas: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, summed delta)
    for use in uses:
        lora = use.lora
        unmatched: list[str] = []
        misfit: list[str] = []
        applied = 0
        for target, layer in lora.layers.items():
            found = targets.find(target)
            if found is None:
                unmatched.append(target)
                continue
            kind, module = found
            multiplier = use.unet_multiplier if kind == "unet" else use.te_multiplier
            weight = module.weight
            try:
                delta = lora_delta(layer, weight.shape)
            except ValueError as exc:
                misfit.append(f"{target}: {exc}")
                continue
            applied += 1
            if multiplier == 0:
                continue
            key = id(weight)
            previous = deltas[key][1] if key in deltas else 0
            deltas[key] = (weight, previous + multiplier * delta.to(weight.device))
        if applied == 0:
            warnings.append(f"LoRA '{lora.name}' does not fit this model (none of its {len(lora.layers)} layers match)")
            continue
        if unmatched or misfit or lora.unsupported:
            skipped = len(unmatched) + len(misfit) + len(lora.unsupported)
            example = (unmatched + misfit + lora.unsupported)[0]
            warnings.append(f"LoRA '{lora.name}': {skipped} of its keys were not applied (e.g. {example})")
    originals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for weight, delta in deltas.values():
                original = weight.detach().clone()
                originals.append((weight, original))
                weight.copy_((original.float() + delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in originals:
                weight.copy_(original)
