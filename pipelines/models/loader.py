"""Build diffusers modules from checkpoint files on disk, offline.

Single-file checkpoints: the architecture is derived from tensor shapes (``architecture.py``), the modules are
built empty and the original-layout weights converted straight into them (diffusers' own LDM converters for the
UNet and VAE, ours for the text encoders). Diffusers folders load with ``from_pretrained(local_files_only=True)``.
Nothing here reaches a model hub.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines.errors import EaselError
from pipelines.models.architecture import (
    FAMILIES,
    INPAINT_IN_CHANNELS,
    Architecture,
    TextEncoderSpec,
    derive_architecture,
    parse_sidecar_yaml,
)
from pipelines.models.tokenizers import load_clip_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class LoadedModel:
    """A checkpoint's modules, on the CPU, in the dtype asked for; the manager places them on a device."""

    family: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any]

    @property
    def is_sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def is_inpaint(self) -> bool:
        """An inpainting UNet (mask + masked image as extra input channels): every mode runs the inpaint pipeline."""
        return self.unet.config.in_channels == INPAINT_IN_CHANNELS

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a ``.safetensors`` file without reading its tensors (cheap even for 7 GB files)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise EaselError(f"{path.name}: not a readable .safetensors file ({exc})") from exc


def read_sidecar(path: Path) -> dict[str, Any]:
    """The A1111-style ``<checkpoint>.yaml`` next to a checkpoint, if there is one."""
    yaml_path = path.with_suffix(".yaml")
    return parse_sidecar_yaml(yaml_path.read_text(errors="replace")) if yaml_path.is_file() else {}


def load_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint. Pickles only when allowed, and then weights-only."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise EaselError(
                f"{path.name} is a pickle file, which can run code when loaded. Convert it to .safetensors, "
                "or start Easel with --allow-pickle to load it (weights only)."
            )
        data = load_pickle_weights(path)
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise EaselError(f"{path.name}: holds no state dict")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EaselError(f"{path.name}: not a readable .safetensors file ({exc})") from exc


def load_pickle_weights(path: Path) -> Any:
    """A pickle file's contents, read weights-only; refusals and read errors said in Easel's words.

    torch's own message advises ``weights_only=False`` (running the file's code), with ANSI codes: never the advice
    to give. A pickle that names a function or class beyond plain tensors and containers needs code execution to
    load, and Easel does not run code from model files, whatever ``--allow-pickle`` says.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _PICKLED_GLOBAL.search(str(exc))
        if named is not None:
            raise EaselError(
                f"{path.name} was refused: loading it would run code it names ({named.group(1)}), and Easel never "
                "runs code from model files. Use a .safetensors copy of it (most models are published as one)."
            ) from None
        raise EaselError(_unreadable_pickle(path)) from None
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise EaselError(_unreadable_pickle(path)) from exc


def _unreadable_pickle(path: Path) -> str:
    return (
        f"{path.name} could not be read: it is damaged or not a PyTorch checkpoint. Easel never runs code from "
        "model files, so a pickle it cannot read as plain weights is refused; a .safetensors copy of it will load."
    )


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype, what: str) -> None:
    """Strictly load converted weights into an empty-built module, casting on the way."""
    expected = set(module.state_dict().keys())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise EaselError(
            f"the {what} weights do not match the detected architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    module.eval().requires_grad_(False)


def _clip_state(sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec, model: torch.nn.Module) -> dict:
    """HF-CLIP layout: strip the checkpoint prefix and match the model's own key style."""
    canonical = {k.removeprefix("text_model."): k for k in model.state_dict()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(spec.prefix):
            continue
        name = key[len(spec.prefix) :].removeprefix("text_model.")
        if name == "embeddings.position_ids":
            continue  # a buffer the model makes itself
        out[canonical.get(name, name)] = value
    return out


_OPEN_CLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _open_clip_state(sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec, model: torch.nn.Module) -> dict:
    """OpenCLIP layout -> HF CLIP: split fused q/k/v, rename, transpose the projection, drop unused layers."""
    canonical = {k.removeprefix("text_model."): k for k in model.state_dict()}
    hidden = spec.config["hidden_size"]
    n_layers = spec.config["num_hidden_layers"]
    out: dict[str, torch.Tensor] = {}

    def put(name: str, value: torch.Tensor) -> None:
        out[canonical.get(name, name)] = value

    for key, value in sd.items():
        if not key.startswith(spec.prefix):
            continue
        name = key[len(spec.prefix) :]
        if name == "token_embedding.weight":
            put("embeddings.token_embedding.weight", value)
        elif name == "positional_embedding":
            put("embeddings.position_embedding.weight", value)
        elif name.startswith("ln_final."):
            put("final_layer_norm." + name.split(".", 1)[1], value)
        elif name == "text_projection":
            if spec.with_projection:
                put("text_projection.weight", value.T.contiguous())
        elif name.startswith("transformer.resblocks."):
            index, rest = name.removeprefix("transformer.resblocks.").split(".", 1)
            if int(index) >= n_layers:
                continue  # SD2's last layer: never used, diffusers' model does not have it
            base = f"encoder.layers.{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for part, chunk in zip(("q", "k", "v"), value.split(hidden, dim=0), strict=True):
                    put(f"{base}self_attn.{part}_proj.{kind}", chunk.contiguous())
            else:
                module, param = rest.rsplit(".", 1)
                put(f"{base}{_OPEN_CLIP_LAYER.get(module, module)}.{param}", value)
        # anything else (logit_scale, attn_mask) is not part of the HF text model
    return out


def build_text_encoder(sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    config = CLIPTextConfig(**{k: v for k, v in spec.config.items() if not k.startswith("_")})
    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    convert = _clip_state if spec.layout == "clip" else _open_clip_state
    _load_into(model, convert(sd, spec, model), dtype, "text encoder")
    return model


def build_from_state_dict(
    sd: Mapping[str, torch.Tensor], arch: Architecture, dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Empty-build each module from the derived configs and convert the original-layout weights into it."""
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(arch.unet)
        vae = AutoencoderKL.from_config(arch.vae)
    _load_into(unet, convert_ldm_unet_checkpoint(dict(sd), unet.config), dtype, "UNet")
    _load_into(vae, convert_ldm_vae_checkpoint(dict(sd), vae.config), dtype, "VAE")
    encoders = [build_text_encoder(sd, spec, dtype) for spec in arch.text_encoders]
    # OpenCLIP encoders (SD2, SDXL's second) pad with "!" (id 0); CLIP-L pads with the end token
    tokenizers = [
        load_clip_tokenizer("!" if spec.layout == "open_clip" else "<|endoftext|>") for spec in arch.text_encoders
    ]
    model = LoadedModel(arch.family, unet, vae, encoders, tokenizers, dict(arch.scheduler))
    prefault(model.modules())
    return model


def prefault(modules: list[torch.nn.Module]) -> None:
    """Read one value from every memory page of the weights once, at load time.

    safetensors hands back memory-mapped tensors; untouched, a part only one mode uses (the VAE encoder, which
    txt2img never runs) would be read from disk in the middle of a later generation, and memory use would grow
    long after loading. Touching the pages costs no copy: RSS then shows the model's real footprint at once.
    """
    with torch.no_grad():
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.device.type == "cpu" and tensor.numel():
                    step = max(1, 4096 // tensor.element_size())
                    tensor.reshape(-1)[::step].sum()


def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """A1111's test for SD2 checkpoints without a sidecar: a v model's output at t=999 sits far below the input."""
    context_dim = unet.config.cross_attention_dim
    dtype = unet.dtype
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=dtype)
    cond = torch.zeros((1, 77, context_dim), dtype=dtype)
    with torch.no_grad():
        out = unet(x, torch.tensor([999]), encoder_hidden_states=cond).sample
    return float((out - x).mean()) < -1.0


def load_single_file(path: Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False) -> LoadedModel:
    """Open a single-file checkpoint of any supported family."""
    if not path.is_file():
        raise EaselError(f"checkpoint not found: {path}")
    sidecar = read_sidecar(path)
    sd = load_state_dict(path, allow_pickle)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    try:
        arch = derive_architecture(shapes, sidecar)
        model = build_from_state_dict(sd, arch, dtype)
    except EaselError as exc:
        raise EaselError(f"{path.name}: {exc}") from exc
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise EaselError(f"{path.name}: unrecognised checkpoint layout ({type(exc).__name__}: {exc})") from exc
    if arch.family == "sd2" and "parameterization" not in sidecar and probe_v_prediction(model.unet):
        model.family = "sd2_v"
        model.scheduler_config["prediction_type"] = "v_prediction"
    mark_v_prediction(model, sd)
    return model


def mark_v_prediction(model: LoadedModel, state: Mapping[str, torch.Tensor]) -> None:
    """SDXL v-prediction checkpoints (NoobAI-XL V-Pred and kin) carry marker keys, read as Forge and ComfyUI do:
    ``v_pred`` means v-prediction, ``ztsnr`` a zero-terminal-SNR schedule (its last sigma is then very large)."""
    if not model.is_sdxl:
        return
    if "v_pred" in state:
        model.scheduler_config["prediction_type"] = "v_prediction"
    if "ztsnr" in state:
        model.scheduler_config["rescale_betas_zero_snr"] = True


def detect_folder_family(folder: Path) -> str:
    """The family of a diffusers folder, from its model_index, UNet and scheduler configs."""
    index = json.loads((folder / "model_index.json").read_text())
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    inpaint = unet_cfg.get("in_channels") == INPAINT_IN_CHANNELS
    if "XL" in index.get("_class_name", "") or unet_cfg.get("addition_embed_type") == "text_time":
        if index.get("text_encoder") in (None, [None, None]):
            return "sdxl_refiner"
        return "sdxl_inpaint" if inpaint else "sdxl"
    cross = unet_cfg.get("cross_attention_dim")
    if cross == 768 or unet_cfg.get("attention_head_dim") == 8:
        return "sd1_inpaint" if inpaint else "sd1"
    if inpaint:
        return "sd2_inpaint"
    return "sd2_v" if sched_cfg.get("prediction_type") == "v_prediction" else "sd2"


def load_diffusers_folder(folder: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Open a diffusers folder's modules, offline; the shipped tokenizer stands in for a missing one."""
    try:
        family = detect_folder_family(folder)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        names = ["text_encoder_2"] if family == "sdxl_refiner" else ["text_encoder"]
        if family in ("sdxl", "sdxl_inpaint"):
            names.append("text_encoder_2")
        encoders, tokenizers = [], []
        for name in names:
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            encoders.append(cls.from_pretrained(folder / name, torch_dtype=dtype, local_files_only=True))
            tokenizers.append(_folder_tokenizer(folder / name.replace("text_encoder", "tokenizer"), name, family))
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise EaselError(f"{folder.name}: not a loadable diffusers folder ({exc})") from exc
    for module in (unet, vae, *encoders):
        module.eval().requires_grad_(False)
    return LoadedModel(family, unet, vae, encoders, tokenizers, sched)


def _folder_tokenizer(folder: Path, encoder_name: str, family: str) -> Any:
    """A folder's own tokenizer if it is a full CLIP one, else the shipped vocabulary."""
    pad = "!" if encoder_name == "text_encoder_2" or family.startswith("sd2") else "<|endoftext|>"
    if folder.is_dir():
        from transformers import CLIPTokenizer

        try:
            tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            if len(tok) == 49408 and tok.model_max_length == 77:
                return tok
        except (OSError, ValueError):
            pass
    return load_clip_tokenizer(pad)


def load_checkpoint(path: Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False) -> LoadedModel:
    """Open a checkpoint file or diffusers folder."""
    model = load_diffusers_folder(path, dtype) if path.is_dir() else load_single_file(path, dtype, allow_pickle)
    assert model.family in FAMILIES
    return model
