"""Diffusers state dicts -> the original LDM/SGM single-file key layout (what A1111/Forge/Civitai files use).

diffusers 0.42's wheel only converts the other way (``diffusers.loaders.single_file_utils``); these pure functions
are their inverse, checked against them by ``tests/test_ldm_layout.py``. Used to write tiny test/demo checkpoints
and to export a diffusers folder as one ``.safetensors`` file. Tensors are returned as-is (possibly views of the
module's parameters) except where the layout changes a shape; call ``.contiguous()`` before saving.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

# Where each module's keys live in an original-layout file: the one definition every reader and writer of the layout
# uses (architecture detection, the loaders, the VAE and LoRA readers, the tiny-model writer).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
REFINER_TE_PREFIX = "conditioner.embedders.0.model."

StateDict = dict[str, torch.Tensor]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP = {
    "conv_norm_out": "norm_out",
    "conv_in": "conv_in",
    "conv_out": "conv_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _split_param(key: str) -> tuple[str, str]:
    """``a.b.weight`` -> (``a.b``, ``weight``)."""
    module, _, param = key.rpartition(".")
    return module, param


def _unet_layers_per_block(unet_config: Mapping[str, Any]) -> int:
    lpb = unet_config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError(f"per-block layers_per_block {lpb!r} has no original-layout equivalent here")
    return lpb


def unet_to_ldm(unet_state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]) -> StateDict:
    """A ``UNet2DConditionModel`` state dict in the original layout, keys prefixed ``model.diffusion_model.``.

    Attention blocks keep diffusers' inner names (LDM used the same ones); proj_in/proj_out keep their shape
    (1x1 conv for SD1.x, linear for SD2.x/SDXL), as in the model. Raises ValueError on any key it cannot place,
    so no weight is ever dropped silently.
    """
    lpb = _unet_layers_per_block(unet_config)
    step = lpb + 1
    up_has_attention = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    out: StateDict = {}
    for key, tensor in unet_state_dict.items():
        module, param = _split_param(key)
        if module in _UNET_TOP:
            out[f"{UNET_PREFIX}{_UNET_TOP[module]}.{param}"] = tensor
            continue
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            target = f"input_blocks.{1 + block * step + layer}"
            new = f"{target}.0.{_unet_resnet_key(rest)}" if kind == "resnets" else f"{target}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{1 + int(m[1]) * step + lpb}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_unet_resnet_key(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            target = f"output_blocks.{block * step + layer}"
            new = f"{target}.0.{_unet_resnet_key(rest)}" if kind == "resnets" else f"{target}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            slot = 2 if up_has_attention[block] else 1
            new = f"output_blocks.{block * step + lpb}.{slot}.conv.{m[2]}"
        else:
            raise ValueError(f"UNet key {key!r} has no original-layout equivalent")
        out[UNET_PREFIX + new] = tensor
    return out


def _unet_resnet_key(rest: str) -> str:
    module, param = _split_param(rest)
    if module not in _UNET_RESNET:
        raise ValueError(f"unexpected UNet resnet parameter {rest!r}")
    return f"{_UNET_RESNET[module]}.{param}"


def vae_to_ldm(vae_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """An ``AutoencoderKL`` state dict in the original layout, keys prefixed ``first_stage_model.``.

    The decoder's up blocks are numbered from the lowest resolution in diffusers and from the highest in LDM,
    so their indices are reversed; the mid-block attention's linear weights become 1x1 conv weights.
    """
    n_up = 1 + max(
        (int(m[1]) for k in vae_state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1
    )
    out: StateDict = {}
    for key, tensor in vae_state_dict.items():
        module, param = _split_param(key)
        value = tensor
        if module in ("quant_conv", "post_quant_conv"):
            new = key
        elif m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)", module):
            new = f"{m[1]}.{_VAE_TOP[m[2]]}.{param}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet_name(m[3])}.{param}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
            new = f"encoder.down.{m[1]}.downsample.conv.{param}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet_name(m[3])}.{param}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{param}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)", module):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet_name(m[3])}.{param}"
        elif (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module)) and m[2] in _VAE_ATTN:
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{param}"
            if param == "weight" and m[2] != "group_norm":
                value = tensor[:, :, None, None]  # linear -> 1x1 conv
        else:
            raise ValueError(f"VAE key {key!r} has no original-layout equivalent")
        out[VAE_PREFIX + new] = value
    return out


def _vae_resnet_name(name: str) -> str:
    if name not in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"):
        raise ValueError(f"unexpected VAE resnet module {name!r}")
    return "nin_shortcut" if name == "conv_shortcut" else name


def _strip_text_model(key: str) -> str:
    """transformers >= 5.6 ``CLIPTextModel`` keys have no ``text_model.``; ``...WithProjection`` keys do."""
    return key.removeprefix("text_model.")


def clip_l_to_ldm(te_state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A HF-CLIP text encoder (SD1.x, SDXL's first) in the original layout: ``{prefix}text_model.*``.

    ``prefix`` is the part before ``text_model.``: ``cond_stage_model.transformer.`` (SD1.x) or
    ``conditioner.embedders.0.transformer.`` (SDXL). Accepts keys with or without ``text_model.``.
    A ``text_projection.weight`` (if any) is kept under ``{prefix}text_projection.weight``.
    """
    out: StateDict = {}
    for key, tensor in te_state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight; older transformers saved it
        inner = _strip_text_model(key)
        out[prefix + (inner if inner.startswith("text_projection.") else "text_model." + inner)] = tensor
    return out


def open_clip_to_ldm(
    te_state_dict: Mapping[str, torch.Tensor], prefix: str, proj: torch.Tensor | None = None
) -> StateDict:
    """A CLIP text encoder written in OpenCLIP's layout (SD2.x, SDXL's second encoder, the refiner's encoder).

    q/k/v projections are concatenated into ``attn.in_proj_*``; ``text_projection`` is stored as
    ``[hidden, projection]``, the transpose of diffusers' ``text_projection.weight``. ``proj`` (diffusers layout,
    ``[projection, hidden]``) is written when the state dict has no projection of its own: SD2 files carry one
    that diffusers ignores.
    """
    inner = {_strip_text_model(k): v for k, v in te_state_dict.items() if not k.endswith("position_ids")}
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in inner.items():
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = tensor
        elif (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)) and m[2] in _CLIP_LAYER:
            out[f"{prefix}transformer.resblocks.{m[1]}.{_CLIP_LAYER[m[2]]}.{m[3]}"] = tensor
        else:
            raise ValueError(f"text encoder key {key!r} has no OpenCLIP equivalent")
    for (layer, param), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer} lacks one of q/k/v {param}")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    if prefix + "text_projection" not in out and proj is not None:
        out[prefix + "text_projection"] = proj.T
    return out


def random_open_clip_resblock(
    prefix: str, layer: int, hidden: int, intermediate: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> StateDict:
    """A seeded random OpenCLIP resblock (``transformer.resblocks.{layer}.*``), std 0.02 like CLIP's init.

    SD2's original text encoder has one more layer than diffusers' (SD2 conditions on the penultimate one and
    diffusers drops the last); a converted file needs it to look like a real one.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "ln_1.weight": (hidden,),
        "ln_1.bias": (hidden,),
        "attn.in_proj_weight": (3 * hidden, hidden),
        "attn.in_proj_bias": (3 * hidden,),
        "attn.out_proj.weight": (hidden, hidden),
        "attn.out_proj.bias": (hidden,),
        "ln_2.weight": (hidden,),
        "ln_2.bias": (hidden,),
        "mlp.c_fc.weight": (intermediate, hidden),
        "mlp.c_fc.bias": (intermediate,),
        "mlp.c_proj.weight": (hidden, intermediate),
        "mlp.c_proj.bias": (hidden,),
    }
    out: StateDict = {}
    for name, shape in shapes.items():
        if name.startswith("ln_"):
            value = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name.endswith("bias"):
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=gen) * 0.02
        out[f"{prefix}transformer.resblocks.{layer}.{name}"] = value.to(dtype)
    return out


def ldm_schedule_buffers(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000, dtype: torch.dtype = torch.float32
) -> StateDict:
    """The noise-schedule buffers an LDM ``LatentDiffusion`` model saves (SD1.x/SD2.x files carry them).

    Same maths as LDM's ``register_schedule`` ("linear" = diffusers' "scaled_linear"), computed in float64.
    """
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, dim=0)
    acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
    buffers = {
        "betas": betas,
        "alphas_cumprod": acp,
        "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": acp.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - acp).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp),
    }
    return {k: v.to(dtype) for k, v in buffers.items()}


def _state_dict(module: Any) -> StateDict:
    return module.state_dict() if hasattr(module, "state_dict") else dict(module)


def pipeline_to_ldm(family: str, components: Mapping[str, Any], seed: int = 0) -> StateDict:
    """A whole pipeline (``unet``, ``vae``, ``text_encoder``/``text_encoder_2`` modules) as one original-layout
    state dict, the way that family's real single-file checkpoints are laid out.

    SD2.x gets the extra final text-encoder resblock and the (unused) ``text_projection`` real files carry,
    both seeded random; SD1.x/SD2.x also get LDM's noise-schedule buffers.
    """
    unet = components["unet"]
    dtype = next(iter(_state_dict(unet).values())).dtype
    ckpt: StateDict = {}
    ckpt.update(unet_to_ldm(_state_dict(unet), unet.config))
    ckpt.update(vae_to_ldm(_state_dict(components["vae"])))
    if family in ("sd1", "sd1_inpaint"):
        ckpt.update(clip_l_to_ldm(_state_dict(components["text_encoder"]), SD1_TE_PREFIX))
    elif family in ("sd2", "sd2_v", "sd2_inpaint"):
        te = components["text_encoder"]
        cfg = te.config
        hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
        gen = torch.Generator().manual_seed(seed + 7919)
        proj = torch.randn(hidden, hidden, generator=gen).mul_(hidden**-0.5).to(dtype)
        ckpt.update(open_clip_to_ldm(_state_dict(te), SD2_TE_PREFIX, proj=proj))
        ckpt.update(random_open_clip_resblock(SD2_TE_PREFIX, layers, hidden, cfg.intermediate_size, seed + 7920, dtype))
    elif family in ("sdxl", "sdxl_inpaint"):
        ckpt.update(clip_l_to_ldm(_state_dict(components["text_encoder"]), SDXL_TE1_PREFIX))
        ckpt.update(open_clip_to_ldm(_state_dict(components["text_encoder_2"]), SDXL_TE2_PREFIX))
    elif family == "sdxl_refiner":
        ckpt.update(open_clip_to_ldm(_state_dict(components["text_encoder_2"]), REFINER_TE_PREFIX))
    else:
        raise ValueError(f"unknown family {family!r}")
    if family.startswith(("sd1", "sd2")):
        sched = components.get("scheduler")
        cfg = sched.config if sched is not None else {}
        ckpt.update(
            ldm_schedule_buffers(
                cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012), cfg.get("num_train_timesteps", 1000)
            )
        )
    return ckpt
