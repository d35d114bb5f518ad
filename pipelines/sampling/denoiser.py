"""k-diffusion's discrete-schedule denoiser over a diffusers UNet, with classifier-free guidance and hook points.

A sampler only ever asks "what is the clean image at noise level sigma?": ``denoised = model(x, sigma)``. This
module answers it the way A1111 does (k-diffusion's ``CompVisDenoiser`` / ``CompVisVDenoiser`` plus A1111's
``CFGDenoiser``), so every sampler walks the same ODE as there:

- sigma -> UNet timestep by log-sigma interpolation over the model's training sigmas (``ModelSigmas``);
- eps models: ``denoised = x - sigma * eps(x / sqrt(sigma^2 + 1), t)``; v models: the v scalings
  ``c_skip = 1 / (sigma^2 + 1)``, ``c_out = -sigma / sqrt(sigma^2 + 1)``, same ``c_in``;
- LCM: A1111's LCM denoiser (the 50 distilled steps, quantized timesteps and the consistency boundary scalings);
- guidance: the conditional and unconditional halves go through the UNet as one batch ``[cond, uncond]`` (as
  A1111 batches them) and are combined on the denoised predictions: ``uncond + scale * (cond - uncond)``.

Hook points, each typed and optional (``SamplingHooks``): ``before_sampling(state)``; model-call wrappers
``(call, inputs) -> output`` around every UNet call (ControlNet adds its residuals to ``inputs`` there); a guidance
combiner ``(cond, uncond, scale, sigma) -> denoised``; ``after_guidance(denoised, state) -> denoised`` (A1111's
after-CFG callback: inpaint blending of the prediction goes there); ``after_step(state)``. Conditioning can change per
model call through ``conditioning_at(call_index)`` or by replacing ``state.conditioning`` from a hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from pipelines.sampling.schedules import ModelSigmas


@dataclass(frozen=True)
class Conditioning:
    """One step's text conditioning for the whole batch; ``uncond`` None means no classifier-free guidance.

    ``cond``/``uncond`` are ``encoder_hidden_states`` ``[B, tokens, C]``; ``cond_added``/``uncond_added`` are SDXL's
    ``added_cond_kwargs`` (``text_embeds`` ``[B, C]``, ``time_ids`` ``[B, 6]``), passed through to the UNet as-is.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    cond_added: Mapping[str, torch.Tensor] | None = None
    uncond_added: Mapping[str, torch.Tensor] | None = None


# The conditioning of model call k (prompt editing / alternation). Return the same object while it does not change:
# the guided denoiser concatenates [cond, uncond] once per object, not once per call.
ConditioningAt = Callable[[int], Conditioning]


@dataclass
class SamplingState:
    """What hooks see and may change during one sampling run (one batch)."""

    x: torch.Tensor  # latents at sigmas[0] (before sampling) / at the step's sigma (after a step)
    sigmas: torch.Tensor
    conditioning: Conditioning
    total_steps: int
    image_conditioning: torch.Tensor | None = None  # 9-channel inpaint UNets: [mask, masked-image latents]
    step: int = -1  # sampler step of the last ``after_step`` (0-based)
    model_calls: int = 0  # UNet evaluations so far (A1111's CFGDenoiser.step: indexes prompt schedules)
    sigma: float = 0.0
    denoised: torch.Tensor | None = None  # the last step's prediction (live preview)
    stop: bool = False  # set by a hook to end sampling; the result is then the last prediction
    extra: dict[str, Any] = field(default_factory=dict)  # scratch space for extensions


@dataclass
class ModelInputs:
    """The arguments of one ``unet(...)`` call; a model-call wrapper may replace any of them or add residuals."""

    sample: torch.Tensor  # x * c_in, with the inpaint channels concatenated, in the UNet's dtype
    timestep: torch.Tensor  # [batch] float
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    down_block_additional_residuals: Sequence[torch.Tensor] | None = None
    mid_block_additional_residual: torch.Tensor | None = None
    down_intrablock_additional_residuals: Sequence[torch.Tensor] | None = None  # T2I-Adapter features
    sigma: torch.Tensor | None = None  # [batch], for wrappers that need the noise level
    state: SamplingState | None = None


ModelCall = Callable[[ModelInputs], torch.Tensor]


class ModelCallWrapper(Protocol):
    """Wraps every UNet call: may change ``inputs`` (e.g. add ControlNet residuals), then calls ``call(inputs)``."""

    def __call__(self, call: ModelCall, inputs: ModelInputs) -> torch.Tensor: ...


class GuidanceCombiner(Protocol):
    """Combines the conditional and unconditional predictions (denoised images) into one."""

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float, sigma: torch.Tensor) -> torch.Tensor: ...


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, sigma: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) on denoised predictions, as A1111 combines them."""
    return uncond + (cond - uncond) * scale


StateHook = Callable[[SamplingState], None]
DenoisedHook = Callable[[torch.Tensor, SamplingState], torch.Tensor]


@dataclass
class SamplingHooks:
    """The named extension points of the loop (DESIGN.md section 13). Wrappers run outermost first."""

    before_sampling: list[StateHook] = field(default_factory=list)
    model_call: list[ModelCallWrapper] = field(default_factory=list)
    guidance: GuidanceCombiner = cfg
    after_guidance: list[DenoisedHook] = field(default_factory=list)
    after_step: list[StateHook] = field(default_factory=list)


@dataclass
class ModelSwitch:
    """A1111's refiner: another checkpoint takes over once ``at`` of the denoising is done.

    Checked at every model call as A1111 checks it: the noise level's nearest training timestep ``t`` gives
    ``(999 - t) / 1000`` done; from the first call where that reaches ``at``, ``model`` and ``conditioning`` (its own
    prompts' encoding) serve every call. The sampler itself goes on undisturbed, with its history.
    """

    at: float
    model: UNetDenoiser
    conditioning: ConditioningAt
    image_conditioning: torch.Tensor | None = None
    switched_at_call: int | None = None

    def due(self, current: UNetDenoiser, sigma: torch.Tensor) -> bool:
        if self.switched_at_call is not None:
            return False
        training = current.sigmas.sigmas.to(sigma.device, sigma.dtype)
        timestep = int(torch.argmin((training - sigma.max()).abs()))
        return (999 - timestep) / 1000 >= self.at


class UNetDenoiser:
    """A diffusers ``UNet2DConditionModel`` seen as a k-diffusion denoiser over the model's training sigmas."""

    def __init__(self, unet: Any, sigmas: ModelSigmas, prediction_type: str = "epsilon") -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {prediction_type!r}")
        self.unet = unet
        self.sigmas = sigmas
        self.prediction_type = prediction_type
        self.lcm = False

    def for_lcm(self) -> UNetDenoiser:
        """The same UNet over LCM's 50 distilled steps (A1111's LCM sampler uses its own denoiser)."""
        other = UNetDenoiser(self.unet, self.sigmas.lcm(), self.prediction_type)
        other.lcm = True
        return other

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.unet, "dtype", torch.float32)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in)`` with sigma_data = 1, for one sigma (0-d) or one per sample, broadcastable."""
        if sigma.dim() == 1:
            sigma = sigma[:, None, None, None]
        c_in = 1 / (sigma**2 + 1) ** 0.5
        if self.prediction_type == "v_prediction":
            return 1 / (sigma**2 + 1), -sigma * c_in, c_in
        return torch.ones_like(sigma), -sigma, c_in

    def unet_call(self, inputs: ModelInputs) -> torch.Tensor:
        """The innermost call: exactly one ``unet(...)``, output in float32."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": inputs.encoder_hidden_states, "return_dict": False}
        if inputs.added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = inputs.added_cond_kwargs
        if inputs.cross_attention_kwargs is not None:
            kwargs["cross_attention_kwargs"] = inputs.cross_attention_kwargs
        if inputs.down_block_additional_residuals is not None:
            kwargs["down_block_additional_residuals"] = inputs.down_block_additional_residuals
        if inputs.mid_block_additional_residual is not None:
            kwargs["mid_block_additional_residual"] = inputs.mid_block_additional_residual
        if inputs.down_intrablock_additional_residuals is not None:  # a new list: the UNet pops from it
            kwargs["down_intrablock_additional_residuals"] = list(inputs.down_intrablock_additional_residuals)
        return self.unet(inputs.sample, inputs.timestep, **kwargs)[0].float()

    def output_to_denoised(
        self,
        x: torch.Tensor,
        output: torch.Tensor,
        scalings: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        c_skip, c_out, _ = scalings
        # eps: c_skip is 1, so k-diffusion's ``x + eps * c_out`` exactly (and a multiply fewer per call)
        denoised = x + output * c_out if self.prediction_type == "epsilon" else x * c_skip + output * c_out
        if not self.lcm:
            return denoised
        # A1111's LCMCompVisDenoiser.get_scaled_out: the consistency boundary condition, sigma_data 0.5, t * 10.
        scaled_t = timestep[:, None, None, None] * 10.0
        lcm_skip = 0.25 / (scaled_t**2 + 0.25)
        lcm_out = scaled_t / (scaled_t**2 + 0.25) ** 0.5
        return lcm_out * denoised + lcm_skip * x


def _cat_added(
    a: Mapping[str, torch.Tensor] | None, b: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    if a is None:
        return None
    if b is None:
        return dict(a)
    return {k: torch.cat([a[k], b[k]]) for k in a}


class GuidedDenoiser:
    """``model(x, sigma) -> denoised`` for one sampling run: conditioning, guidance and hooks bound in.

    Keeps ``last_uncond`` (the unconditional prediction of the last call) for guidance variants that need it
    (DDIM CFG++), and counts model calls in ``state.model_calls``.
    """

    def __init__(
        self,
        model: UNetDenoiser,
        state: SamplingState,
        cfg_scale: float,
        hooks: SamplingHooks | None = None,
        conditioning_at: ConditioningAt | None = None,
        cfg_scale_multiplier: float = 1.0,
        switch: ModelSwitch | None = None,
    ) -> None:
        self.model = model
        self.switch = switch
        self.state = state
        self.cfg_scale = cfg_scale
        self.hooks = hooks or SamplingHooks()
        self.conditioning_at = conditioning_at
        self.cfg_scale_multiplier = cfg_scale_multiplier
        self.last_uncond: torch.Tensor | None = None
        self._call = self._build_call_chain()
        self._batched_for: Conditioning | None = None
        self._batched_value: tuple[torch.Tensor, dict[str, torch.Tensor] | None] = (torch.empty(0), None)

    def _build_call_chain(self) -> ModelCall:
        call: ModelCall = self.model.unet_call
        for wrapper in reversed(self.hooks.model_call):
            call = _bind(wrapper, call)
        return call

    def _batched(self, c: Conditioning) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``[cond, uncond]`` concatenated once per conditioning, not once per model call."""
        if self._batched_for is not c:
            assert c.uncond is not None
            hidden = torch.cat([c.cond, c.uncond]).to(self.model.dtype)
            added = _cat_added(c.cond_added, c.uncond_added)
            if added is not None:
                added = {k: v.to(self.model.dtype) for k, v in added.items()}
            self._batched_for, self._batched_value = c, (hidden, added)
        return self._batched_value

    def _conditioning(self) -> Conditioning:
        if self.conditioning_at is not None:
            self.state.conditioning = self.conditioning_at(self.state.model_calls)
        return self.state.conditioning

    def _run(self, x_in: torch.Tensor, sigma_in: torch.Tensor, hidden: torch.Tensor, added: Any) -> torch.Tensor:
        model = self.model
        scalings = model.scalings(sigma_in)
        sample = x_in * scalings[2]
        image_cond = self.state.image_conditioning
        if image_cond is not None:
            repeats = x_in.shape[0] // image_cond.shape[0]
            sample = torch.cat([sample, image_cond.repeat(repeats, 1, 1, 1).to(sample)], dim=1)
        timestep = model.sigmas.timestep(sigma_in)
        if sigma_in.dim() == 0:  # one noise level for the whole batch (every sampler here): views, no copies
            timestep, sigma_in = timestep.expand(x_in.shape[0]), sigma_in.expand(x_in.shape[0])
        dtype = model.dtype
        inputs = ModelInputs(
            sample=sample.to(dtype),
            timestep=timestep,
            encoder_hidden_states=hidden.to(dtype),
            added_cond_kwargs=None if added is None else {k: v.to(dtype) for k, v in added.items()},
            sigma=sigma_in,
            state=self.state,
        )
        output = self._call(inputs)
        return model.output_to_denoised(x_in, output.to(x_in.dtype), scalings, timestep.to(x_in.dtype))

    def _switch_model(self, switch: ModelSwitch) -> None:
        """The refiner takes over: its UNet behind the same hooks, its prompts' encoding, its extra channels."""
        switch.switched_at_call = self.state.model_calls
        self.model, self.conditioning_at = switch.model, switch.conditioning
        self.state.image_conditioning = switch.image_conditioning
        self.state.extra["refiner_switched_at_call"] = self.state.model_calls
        self._batched_for = None
        self._call = self._build_call_chain()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        batch = x.shape[0]
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma_t.dim() > 0 and sigma_t.numel() == 1:
            sigma_t = sigma_t.reshape(())
        if self.switch is not None and self.switch.due(self.model, sigma_t):
            self._switch_model(self.switch)
        c = self._conditioning()
        if c.uncond is None:
            denoised = self._run(x, sigma_t, c.cond, c.cond_added)
        else:
            if c.cond.shape[1:] == c.uncond.shape[1:]:
                hidden, added = self._batched(c)
                sigma_in = sigma_t if sigma_t.dim() == 0 else torch.cat([sigma_t, sigma_t])
                both = self._run(torch.cat([x, x]), sigma_in, hidden, added)
                cond_d, uncond_d = both[:batch], both[batch:]
            else:  # different token lengths: two calls, as A1111 does without padding
                cond_d = self._run(x, sigma_t, c.cond, c.cond_added)
                uncond_d = self._run(x, sigma_t, c.uncond, c.uncond_added)
            self.last_uncond = uncond_d
            scale = self.cfg_scale * self.cfg_scale_multiplier
            denoised = self.hooks.guidance(
                cond_d, uncond_d, scale, sigma_t.expand(batch) if sigma_t.dim() == 0 else sigma_t
            )
        for hook in self.hooks.after_guidance:
            denoised = hook(denoised, self.state)
        self.state.model_calls += 1
        return denoised


def _bind(wrapper: ModelCallWrapper, call: ModelCall) -> ModelCall:
    def bound(inputs: ModelInputs) -> torch.Tensor:
        return wrapper(call, inputs)

    return bound


def with_residuals(inputs: ModelInputs, down: Sequence[torch.Tensor] | None, mid: torch.Tensor | None) -> ModelInputs:
    """``inputs`` with ControlNet-style residuals added to any already there (several ControlNets sum)."""
    if down is not None and inputs.down_block_additional_residuals is not None:
        down = [a + b for a, b in zip(inputs.down_block_additional_residuals, down, strict=True)]
    elif down is None:
        down = inputs.down_block_additional_residuals
    if mid is not None and inputs.mid_block_additional_residual is not None:
        mid = inputs.mid_block_additional_residual + mid
    elif mid is None:
        mid = inputs.mid_block_additional_residual
    return replace(inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def with_intrablock_residuals(inputs: ModelInputs, features: Sequence[torch.Tensor]) -> ModelInputs:
    """``inputs`` with T2I-Adapter features added to any already there (several adapters sum, level by level)."""
    current = inputs.down_intrablock_additional_residuals
    if current is not None:
        if len(current) != len(features):
            raise ValueError(f"adapter features for {len(features)} levels cannot join {len(current)} levels")
        features = [a + b for a, b in zip(current, features, strict=True)]
    return replace(inputs, down_intrablock_additional_residuals=list(features))
