"""reference_only / reference_adain / reference_adain+attn: guidance by a picture without any ControlNet model.

At each model call of the guidance window, the reference picture's latents (VAE-encoded once per size) are noised
to the call's sigma and run through the UNet once, a "write" pass whose output is thrown away; then the real call
("read") runs with what the write pass left:

- attention (reference_only, reference_adain+attn): every self-attention layer (``attn1``) records its input
  tokens during the write pass; in the real call it attends to ``[own tokens, reference tokens]``, so the picture
  being made borrows the reference's look. The layers are ranked by width (widest first, rank ``i / n``) and only
  those ranked below the unit's weight take part: weight 1 is every layer, 0.5 the wider half.
- AdaIN (reference_adain, reference_adain+attn): the outputs of the middle block and of the deeper down/up layers
  record their per-channel mean and variance, and the real call's outputs are renormalised to them. Ranks as
  sd-webui-controlnet's (middle 0, down layers ``2 - 2 w / n``, up layers ``2 w / n``), against the weight.

Style fidelity (``threshold_a``, default 0.5) blends the unconditional rows of the CFG batch back toward their own
result: ``uncond = fidelity * own + (1 - fidelity) * shared``, the conditional rows always using the shared one.
As sd-webui-controlnet: SDXL uses ``fidelity ** 3``; "ControlNet is more important" uses 1 (the reference only on
the conditional pass), "My prompt is more important" and the hires fix pass 0.

Everything is put on the UNet for one request through diffusers' own API (``set_attn_processor`` with wrapping
processors, ``register_forward_hook`` for AdaIN) and taken off again in ``finally``: the original processor objects
go back, the hooks are removed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from pipelines.imaging.latents import encode_images
from pipelines.sampling.denoiser import ModelCall, ModelInputs

from .units import Unit, fit

ATTENTION = ("reference_only", "reference_adain+attn")
ADAIN = ("reference_adain", "reference_adain+attn")
MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
EPS = 1e-6


@dataclass
class Bank:
    """What the wrapped layers do right now; shared by all of them for one request."""

    mode: str = "off"  # "write" (the reference pass), "read" (the real call) or "off"
    attn_weight: float = 0.0  # the writing unit's weight for attention sharing (0: it shares none)
    adain_weight: float = 0.0
    fidelity: float = 0.5
    uncond: slice | None = None  # the reading call's unconditional rows (None: there are none)


class SharedSelfAttention:
    """The processor of one ``attn1`` while reference units run; the layer's own processor does the arithmetic."""

    def __init__(self, inner: Any, bank: Bank, rank: float) -> None:
        self.inner = inner
        self.bank = bank
        self.rank = rank
        self.tokens: list[torch.Tensor] = []
        self.fidelities: list[float] = []

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        extra = dict(kwargs) if temb is None else {"temb": temb, **kwargs}
        bank = self.bank
        if encoder_hidden_states is None and bank.mode == "write" and bank.attn_weight > self.rank:
            self.tokens.append(hidden_states.detach())
            self.fidelities.append(bank.fidelity)
        elif encoder_hidden_states is None and bank.mode == "read" and self.tokens:
            tokens, fidelities = self.tokens, self.fidelities
            self.tokens, self.fidelities = [], []
            context = torch.cat([hidden_states, *(t.to(hidden_states.dtype) for t in tokens)], dim=1)
            shared = self.inner(attn, hidden_states, encoder_hidden_states=context, **extra)
            fidelity = sum(fidelities) / len(fidelities)
            rows = bank.uncond
            if rows is not None and fidelity > 1e-5:
                own = self.inner(attn, hidden_states[rows], attention_mask=attention_mask, **extra)
                shared = shared.clone()
                shared[rows] = fidelity * own + (1.0 - fidelity) * shared[rows]
            return shared
        return self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **extra
        )

    def clear(self) -> None:
        self.tokens, self.fidelities = [], []


class MatchedStatistics:
    """A forward hook on one UNet layer: records (write) or imposes (read) its output's per-channel mean and std."""

    def __init__(self, bank: Bank, rank: float) -> None:
        self.bank = bank
        self.rank = rank
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.fidelities: list[float] = []

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        x = output[0] if isinstance(output, tuple) else output
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        bank = self.bank
        if bank.mode == "write" and bank.adain_weight > self.rank:
            variance, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            self.means.append(mean)
            self.variances.append(variance)
            self.fidelities.append(bank.fidelity)
            return None
        if bank.mode != "read" or not self.means:
            return None
        means, variances, fidelities = self.means, self.variances, self.fidelities
        self.clear()
        variance, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
        std = variance.clamp_min(EPS).sqrt()
        target_mean = sum(means) / len(means)
        target_std = (sum(variances) / len(variances)).clamp_min(EPS).sqrt()
        y = (x.float() - mean) / std * target_std + target_mean
        fidelity = sum(fidelities) / len(fidelities)
        if bank.uncond is not None and fidelity > 1e-5:
            y[bank.uncond] = fidelity * x.float()[bank.uncond] + (1.0 - fidelity) * y[bank.uncond]
        y = y.to(x.dtype)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    def clear(self) -> None:
        self.means, self.variances, self.fidelities = [], [], []


def attention_ranks(unet: Any, names: Sequence[str]) -> dict[str, float]:
    """``attn1`` processors ranked widest first (ties: down, middle, up, in order), rank ``i / n``."""
    sections = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

    def key(item: tuple[int, str]) -> tuple[int, int, int]:
        position, name = item
        width = unet.get_submodule(name.removesuffix(".processor")).to_q.in_features
        return (-width, sections.get(name.split(".")[0], 3), position)

    ordered = [name for _, name in sorted(enumerate(names), key=key)]
    return {name: i / len(ordered) for i, name in enumerate(ordered)}


def _layers(block: Any) -> list[Any]:
    """A down or up block's layers as the original UNet's blocks end: each resnet's attention, or the resnet."""
    attentions = getattr(block, "attentions", None)
    return [attentions[i] if attentions is not None else r for i, r in enumerate(block.resnets)]


def adain_layers(unet: Any) -> list[tuple[Any, float]]:
    """The middle block and the layers of every level but the outermost, with sd-webui-controlnet's ranks."""
    down = [layer for block in unet.down_blocks[1:] for layer in _layers(block)]
    up = [layer for block in unet.up_blocks[:-1] for layer in _layers(block)]
    ranked = [] if unet.mid_block is None else [(unet.mid_block, 0.0)]
    ranked += [(layer, 1.0 - i / len(down)) for i, layer in enumerate(down)]
    ranked += [(layer, i / len(up)) for i, layer in enumerate(up)]
    return [(layer, 2.0 * rank) for layer, rank in ranked]


def uncond_rows(inputs: ModelInputs) -> slice | None:
    """The unconditional rows of this UNet call: the second half of a [cond, uncond] batch, all, or none."""
    state = inputs.state
    if state is None or state.conditioning.uncond is None:
        return None
    batch, rows = state.x.shape[0], inputs.sample.shape[0]
    if rows == 2 * batch:
        return slice(batch, rows)
    # separate calls (different token counts): this one is the unconditional call if its tokens are not the prompt's
    return None if inputs.encoder_hidden_states.shape[1] == state.conditioning.cond.shape[1] else slice(None)


def style_fidelity(unit: Unit, family: str, hires: bool) -> float:
    fidelity = 0.5 if unit.threshold_a < 0 else min(max(unit.threshold_a, 0.0), 1.0)
    if family.startswith("sdxl"):
        fidelity **= 3.0
    if unit.control_mode == 2:
        return 1.0
    if unit.control_mode == 1 or hires:
        return 0.0
    return fidelity


class ReferenceSharing:
    """One request's reference units on one UNet: the layers wrapped, the reference latents, the write passes."""

    def __init__(self, unet: Any, vae: Any, family: str, seed: int, modules: Sequence[str]) -> None:
        self.unet = unet
        self.vae = vae
        self.family = family
        self.bank = Bank()
        self.noise = torch.Generator("cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFF)
        self.attention = any(m in ATTENTION for m in modules)
        self.adain = any(m in ADAIN for m in modules)
        self.processors: list[SharedSelfAttention] = []
        self.statistics: list[MatchedStatistics] = []
        self._latents: dict[tuple[int, int, int], torch.Tensor] = {}

    @contextmanager
    def installed(self) -> Iterator[ReferenceSharing]:
        saved = dict(self.unet.attn_processors)
        handles = []
        try:
            if self.attention:
                names = [n for n in saved if n.endswith("attn1.processor")]
                ranks = attention_ranks(self.unet, names)
                wrapped = dict(saved)
                for name, rank in ranks.items():
                    wrapped[name] = SharedSelfAttention(saved[name], self.bank, rank)
                    self.processors.append(wrapped[name])
                self.unet.set_attn_processor(wrapped)
            if self.adain:
                for layer, rank in adain_layers(self.unet):
                    hook = MatchedStatistics(self.bank, rank)
                    self.statistics.append(hook)
                    handles.append(layer.register_forward_hook(hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            if self.attention:
                self.unet.set_attn_processor(dict(saved))  # the same processor objects as before

    def _reference_latents(self, unit: Unit, picture: Image.Image, like: torch.Tensor) -> torch.Tensor:
        height, width = like.shape[-2] * 8, like.shape[-1] * 8
        key = (unit.index, height, width)
        if key not in self._latents:
            self._latents[key] = encode_images(self.vae, [fit(picture, width, height, unit.resize_mode)])
        return self._latents[key].to(like.device, like.dtype)

    def _reference_sample(self, unit: Unit, picture: Image.Image, inputs: ModelInputs) -> torch.Tensor:
        """The reference latents noised to this call's sigma, scaled as the UNet's input (``c_in``)."""
        sample = inputs.sample
        assert inputs.sigma is not None
        latents = self._reference_latents(unit, picture, sample)
        channels = latents.shape[1]
        noise = torch.randn(latents.shape, generator=self.noise).to(sample.device, sample.dtype)
        sigma = inputs.sigma.to(sample.dtype).reshape(-1, 1, 1, 1)
        noised = (latents + noise * sigma) / (sigma**2 + 1) ** 0.5
        if sample.shape[1] == channels:
            return noised
        extra = sample[:, channels:]
        if extra.shape[1] == channels + 1:  # a 9-channel inpaint UNet: nothing masked, the reference as the image
            latent_rows = latents.expand(sample.shape[0], -1, -1, -1)
            return torch.cat([noised, torch.zeros_like(extra[:, :1]), latent_rows], dim=1)
        return torch.cat([noised, extra], dim=1)

    def call(
        self, call: ModelCall, plain: ModelInputs, inputs: ModelInputs, units: Sequence[Any], hires: bool
    ) -> torch.Tensor:
        """One model call with reference units: a write pass per unit (``plain``: no residuals), then ``inputs``."""
        try:
            for prepared in units:
                unit = prepared.unit
                self.bank.mode = "write"
                self.bank.attn_weight = unit.weight if unit.module in ATTENTION else 0.0
                self.bank.adain_weight = unit.weight if unit.module in ADAIN else 0.0
                self.bank.fidelity = style_fidelity(unit, self.family, hires)
                sample = self._reference_sample(unit, prepared.detected, plain)
                bare = replace(plain, sample=sample, down_block_additional_residuals=None)
                call(replace(bare, mid_block_additional_residual=None))
            self.bank.mode = "read"
            self.bank.uncond = uncond_rows(inputs)
            return call(inputs)
        finally:
            self.bank.mode = "off"
            for layer in (*self.processors, *self.statistics):
                layer.clear()


def sharing(view: Any, request: Any, units: Sequence[Unit]) -> ReferenceSharing:
    modules = [u.module for u in units]
    return ReferenceSharing(view.unet, view.vae, view.family, request.seed, modules)
