"""The denoising loop: sampler x schedule x steps -> final latents, with A1111's img2img and noise semantics.

``sample()`` is the one entry point the engine calls for txt2img, img2img, inpaint and the hires pass:

- txt2img: ``x = noise * sigmas[0]`` (not ``sqrt(sigma^2 + 1)``), the full schedule;
- img2img: ``t_enc = int(min(strength, 0.999) * steps)``; the sampler walks the tail ``sigmas[steps - t_enc - 1:]``
  from ``x = init + noise * tail[0]`` (``img2img_start`` computes ``start_at_step = steps - t_enc - 1``);
- DPM2 / DPM2 a / DPM++ 3M SDE schedule one step more and drop the next-to-last sigma;
- DPM fast / DPM adaptive choose their own steps inside the model's sigma range (txt2img) or the tail's (img2img);
- DDIM / DDIM CFG++ / PLMS / UniPC ignore the schedule type and use A1111's timesteps; their latents live in the
  variance-preserving space, so the loop converts on the way in and they return VP latents, as A1111 does;
- the SDE samplers draw from per-image seeded Brownian trees when ``brownian_seeds`` is given (A1111's default),
  every other later draw comes from ``noise_source`` (A1111 continues each image's generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from pipelines.errors import EaselError
from pipelines.sampling.denoiser import (
    Conditioning,
    ConditioningAt,
    GuidedDenoiser,
    ModelSwitch,
    SamplingHooks,
    SamplingState,
    UNetDenoiser,
)
from pipelines.sampling.k_samplers import (
    BrownianTreeNoise,
    NoiseSource,
    SamplerOptions,
    SamplerSpec,
    StepInfo,
    a1111_timesteps,
    resolve_sampler,
    timestep_sigmas,
    unipc_sigmas,
)
from pipelines.sampling.schedules import ModelSigmas, Schedule, compute_sigmas, resolve


class _Stopped(Exception):
    """Raised from the step callback when a hook sets ``state.stop``; never leaves ``sample``."""


def img2img_start(steps: int, strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """``(steps to schedule, start_at_step)`` for an img2img pass, as A1111's ``setup_img2img_steps``.

    By default the schedule has ``steps`` steps and the sampler runs ``t_enc + 1`` of them; with ``fix_steps``
    (A1111's "img2img does exactly the steps", and the hires pass) it is stretched so ``steps`` run.
    """
    if fix_steps:
        total = int(steps / min(strength, 0.999)) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total = steps
        t_enc = int(min(strength, 0.999) * steps)
    return total, total - t_enc - 1


def resolve_schedule(sampler: SamplerSpec, schedule: str | None) -> Schedule:
    """The schedule a sampler walks: "Automatic" is the sampler's own default (A1111's per-sampler choice)."""
    spec = resolve(schedule or "automatic")
    return resolve(sampler.default_schedule) if spec.function is None else spec


@dataclass(frozen=True)
class SamplingPlan:
    """What one run walks: the sigmas given to the sampler, the full schedule, and how to start."""

    sampler: SamplerSpec
    schedule: Schedule | None  # None for the timestep samplers
    sigmas: torch.Tensor  # walked by the sampler
    full_sigmas: torch.Tensor  # the whole schedule (A1111 spans its Brownian tree over it)
    sampler_kwargs: dict[str, Any]
    init_alpha_cumprod: float | None = None  # timestep samplers' img2img: the noise level of the init latent

    @property
    def total_steps(self) -> int:
        """Sampler steps (callbacks) the run reports; DPM adaptive decides its own and may report more."""
        if "n" in self.sampler_kwargs:
            return int(self.sampler_kwargs["n"])
        return max(len(self.sigmas) - 1, 0)


def plan(
    sampler: SamplerSpec,
    schedule: str | None,
    steps: int,
    model: ModelSigmas,
    start_at_step: int = 0,
    img2img: bool = False,
    rho: float | None = None,
    beta: tuple[float, float] | None = None,
) -> SamplingPlan:
    """The sigmas for ``sampler`` over ``schedule``; ``model`` is already the sampler's (LCM's for LCM)."""
    if steps < 1:
        raise EaselError("Sampling needs at least one step.")
    if sampler.kind == "timesteps":
        timesteps = a1111_timesteps(steps, sampler.discard_next_to_last_sigma)
        t_enc = steps - 1 - start_at_step
        walked = timesteps[:t_enc] if img2img else timesteps
        init_acp = float(model.alphas_cumprod[timesteps[t_enc]]) if img2img else None
        if sampler.label == "UniPC":
            t_start = (float(walked[-1]) + 1) / len(model) if img2img and len(walked) else 1.0
            sigmas = unipc_sigmas(model, len(walked), t_start) if len(walked) else walked.float()
        else:
            sigmas = timestep_sigmas(model, walked)
        return SamplingPlan(sampler, None, sigmas, sigmas, {}, init_acp)
    chosen = resolve_schedule(sampler, schedule)
    full = compute_sigmas(chosen, steps + (1 if sampler.discard_next_to_last_sigma else 0), model, rho, beta)
    if sampler.discard_next_to_last_sigma:
        full = torch.cat([full[:-2], full[-1:]])
    walked = full[start_at_step:] if img2img else full
    kwargs: dict[str, Any] = {}
    if sampler.kind == "range" and not img2img:
        kwargs = {"sigma_max": model.sigmas[-1], "sigma_min": model.sigmas[0], "n": steps}
    return SamplingPlan(sampler, chosen, walked, full, kwargs)


def initial_latents(run: SamplingPlan, noise: torch.Tensor, init_latents: torch.Tensor | None = None) -> torch.Tensor:
    """The latents at ``run.sigmas[0]`` the sampler starts from."""
    sigma0 = run.sigmas[0].to(noise) if len(run.sigmas) else noise.new_zeros(())  # empty: img2img at strength ~0
    if run.sampler.kind == "timesteps":
        if init_latents is None:
            x_vp = noise
        else:
            acp = float(run.init_alpha_cumprod)  # type: ignore[arg-type]
            x_vp = init_latents * acp**0.5 + noise * (1 - acp) ** 0.5
        return x_vp * (1 + sigma0**2) ** 0.5  # A1111 treats that latent as being at its first timestep
    return noise * sigma0 if init_latents is None else init_latents + noise * sigma0


def sample(
    denoiser: UNetDenoiser,
    sampler_name: str,
    schedule: str | None,
    steps: int,
    latents_noise: torch.Tensor,
    conditioning: Conditioning | ConditioningAt,
    cfg_scale: float,
    noise_source: NoiseSource,
    hooks: SamplingHooks | None = None,
    start_at_step: int = 0,
    *,
    init_latents: torch.Tensor | None = None,
    image_conditioning: torch.Tensor | None = None,
    options: SamplerOptions | None = None,
    brownian_seeds: Sequence[int] | None = None,
    rho: float | None = None,
    beta: tuple[float, float] | None = None,
    switch: ModelSwitch | None = None,
) -> torch.Tensor:
    """Run one batch through ``sampler_name`` over ``schedule`` and return the final latents.

    ``latents_noise`` is each image's first noise draw ``[B, C, h, w]``; ``noise_source`` gives the later ones.
    ``conditioning`` is fixed, or a function of the model-call index (A1111's prompt-editing step counter: build
    the schedule over ``steps * 2`` for ``second_order`` samplers, as A1111 does). ``init_latents`` (img2img) with
    ``start_at_step`` from ``img2img_start``. ``image_conditioning``: a 9-channel inpaint UNet's extra channels.
    """
    hooks = hooks or SamplingHooks()
    options = options or SamplerOptions()
    spec = resolve_sampler(sampler_name)
    model = denoiser.for_lcm() if spec.lcm else denoiser
    img2img = init_latents is not None
    run = plan(spec, schedule, steps, model.sigmas, start_at_step, img2img, rho, beta)
    walked = run.sigmas.to(latents_noise.device)
    x = initial_latents(run, latents_noise, init_latents)
    if len(walked) < 2:  # nothing to walk (img2img at strength ~0): the start, in the sampler's output space
        return x / (1 + walked[0] ** 2) ** 0.5 if spec.kind == "timesteps" and len(walked) else x

    conditioning_at = None if isinstance(conditioning, Conditioning) else conditioning
    first = conditioning if isinstance(conditioning, Conditioning) else conditioning(0)
    state = SamplingState(x, walked, first, run.total_steps, image_conditioning=image_conditioning)
    for hook in hooks.before_sampling:
        hook(state)
    x = state.x
    if switch is not None and spec.lcm:
        switch = replace(switch, model=switch.model.for_lcm())
    guided = GuidedDenoiser(model, state, cfg_scale, hooks, conditioning_at, spec.cfg_scale_multiplier, switch)

    noise = noise_source
    if spec.brownian and brownian_seeds is not None:
        full = run.full_sigmas
        noise = BrownianTreeNoise(x, full[full > 0].min(), full.max(), brownian_seeds)

    def on_step(info: StepInfo) -> None:
        state.step, state.sigma, state.denoised, state.x = info.i, float(info.sigma), info.denoised, info.x
        for hook in hooks.after_step:
            hook(state)
        if state.stop:
            raise _Stopped

    try:
        with torch.no_grad():
            return spec.function(guided, x, walked, noise, on_step, options, **run.sampler_kwargs)
    except _Stopped:
        assert state.denoised is not None
        return state.denoised
