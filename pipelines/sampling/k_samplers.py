"""Every A1111 sampler as one function walking a list of sigmas, written from the published formulas.

A sampler is ``(model, x, sigmas, noise, callback, options) -> x``: ``model(x, sigma)`` is the (guided) denoiser,
``x`` starts at ``sigmas[0]`` and ``noise(sigma, sigma_next)`` gives each later random draw. Samplers never call
``torch.randn``: the caller decides where noise comes from (A1111 continues each image's seeded generator, and uses a
seeded Brownian tree for the SDE samplers), so results are reproducible and batch-independent.

Sources: Karras et al. 2022 (Euler, Heun, churn), Lu et al. 2022 (DPM-Solver, DPM-Solver++ 2S/2M/SDE), k-diffusion
(DPM2, ancestral steps, LMS, DPM++ 2M/3M SDE; the facts, not the code), Xu et al. 2023 (Restart, with A1111's
automatic restart list), Luo et al. 2023 (LCM), Song et al. 2021 (DDIM), Liu et al. 2022 (PLMS), Zhao et al. 2023
(UniPC, B(h) variants), Chung et al. 2024 (CFG++, in A1111's DDIM form).

DDIM, DDIM CFG++, PLMS and UniPC are A1111's "timestep" samplers: they work on the variance-preserving latent and
ignore the schedule type. Here they are written in the sigma formulation (DDIM with eta 0 *is* the Euler step in
sigma), walk the sigma list ``timestep_sigmas`` / ``unipc_sigmas`` builds, and return the variance-preserving
latent at their last (non-zero) sigma, as A1111 does. UniPC evaluates the UNet at the timestep the log-sigma
interpolation gives for its sigma, where A1111's uni_pc interpolates log-alpha: they differ by a few thousandths
of a timestep between training steps (measured: at most 0.004 for 5-33 steps).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from pipelines.errors import EaselError
from pipelines.sampling.schedules import ModelSigmas, karras_sigmas


class Denoise(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


class NoiseSource(Protocol):
    """The next random draw, shaped like the latents; SDE samplers pass the interval it is for."""

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after each model evaluation it counts as a step."""

    i: int
    x: torch.Tensor
    sigma: torch.Tensor
    sigma_hat: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's sampler parameters. ``eta`` None means the sampler's own default (1 ancestral, 0 DDIM)."""

    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    uni_pc_variant: str = "bh1"  # A1111's default
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True


def _eta(options: SamplerOptions, default: float) -> float:
    return default if options.eta is None else float(options.eta)


def _report(callback: StepCallback | None, i: int, x: Any, sigma: Any, sigma_hat: Any, denoised: Any) -> None:
    if callback is not None:
        callback(StepInfo(i, x, torch.as_tensor(sigma), torch.as_tensor(sigma_hat), denoised))


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_down, sigma_up)``: step deterministically to sigma_down, then add sigma_up of fresh noise."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churn(
    x: torch.Tensor, sigma: torch.Tensor, steps: int, options: SamplerOptions, noise: NoiseSource, sigma_next: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras's stochastic "churn": raise the noise level by gamma before the step (no-op by default)."""
    gamma = 0.0
    if options.s_tmin <= float(sigma) <= options.s_tmax:
        gamma = min(options.s_churn / steps, 2**0.5 - 1)
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_next) * options.s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def sample_euler(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, algorithm 2 without the correction)."""
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, options, noise, sigmas[i + 1])
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def sample_euler_ancestral(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """Euler steps down to sigma_down, then fresh noise up to the next sigma."""
    eta = _eta(options, 1.0)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * sigma_up
    return x


def sample_heun(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, algorithm 2); Euler on the last step to 0."""
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, options, noise, sigmas[i + 1])
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.log().lerp(b.log(), 0.5).exp()


def sample_dpm_2(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver-2 style midpoint steps (the derivative re-evaluated at the log-midpoint sigma)."""
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churn(x, sigmas[i], steps, options, noise, sigmas[i + 1])
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = _log_midpoint(sigma_hat, sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def sample_dpm_2_ancestral(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM2 midpoint steps down to sigma_down, then fresh noise."""
    eta = _eta(options, 1.0)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = _log_midpoint(sigmas[i], sigma_down)
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (nodes t_i..t_{i-order+1})."""
    nodes = [t[i - k] for k in range(order)]
    basis = np.poly1d([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * np.poly1d([1.0, -node]) / (nodes[j] - node)
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def sample_lms(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` derivatives."""
    nodes = sigmas.detach().cpu().double().numpy()
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        history.append(to_d(x, sigmas[i], denoised))
        if len(history) > order:
            history.pop(0)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, nodes, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(history), strict=False))
    return x


def _t(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time variable: t = -log sigma (half the log-SNR for sigma_data 1)."""
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def sample_dpmpp_2s_ancestral(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver++(2S) single-step second-order updates down to sigma_down, then fresh noise."""
    eta = _eta(options, 1.0)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * sigma_up
    return x


def sample_dpmpp_sde(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    r: float = 0.5,
) -> Tensor:
    """DPM-Solver++ stochastic: two half-steps, each an ancestral DPM-Solver++(1) update (r = 1/2)."""
    eta = _eta(options, 1.0)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * options.s_noise * su
        denoised_2 = model(x_2, _sigma(s))
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * options.s_noise * su
    return x


def sample_dpmpp_2m(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver++(2M): multistep second order from the last two predictions; first order at the ends."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _dpmpp_2m_sde(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    solver_type: str,
) -> Tensor:
    eta = _eta(options, 1.0)
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # the last step lands on the prediction
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * options.s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_2m_sde(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint correction."""
    return _dpmpp_2m_sde(model, x, sigmas, noise, callback, options, "midpoint")


def sample_dpmpp_2m_sde_heun(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver++(2M) SDE, Heun correction."""
    return _dpmpp_2m_sde(model, x, sigmas, noise, callback, options, "heun")


def sample_dpmpp_3m_sde(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with the exponential-integrator phi functions."""
    eta = _eta(options, 1.0)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * (
                    options.s_noise
                )
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) in t = -log sigma, with the eps of each evaluation cached per step."""

    def __init__(self, model: Denoise, callback: StepCallback | None) -> None:
        self.model = model
        self.callback = callback

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            cache[key] = (x - self.model(x, _sigma(t))) / _sigma(t)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 0.5) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 3, r2: float = 2 / 3
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def step(self, order: int, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        if order == 1:
            return self.step_1(x, t, t_next, cache)
        if order == 2:
            return self.step_2(x, t, t_next, cache)
        return self.step_3(x, t, t_next, cache)


def _range(sigmas: Tensor, sigma_max: Tensor | float | None, sigma_min: Tensor | float | None) -> tuple[Tensor, Tensor]:
    """(sigma_max, sigma_min) for the samplers that choose their own steps: given, or the schedule's ends."""
    top = torch.as_tensor(sigmas[0] if sigma_max is None else sigma_max, dtype=torch.float32)
    bottom = torch.as_tensor(sigmas[-2] if sigma_min is None else sigma_min, dtype=torch.float32)
    if bottom <= 0 or top <= 0:
        raise EaselError("DPM fast and DPM adaptive need sigma_min and sigma_max above 0.")
    return top, bottom


def sample_dpm_fast(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    sigma_max: Tensor | float | None = None,
    sigma_min: Tensor | float | None = None,
    n: int | None = None,
) -> Tensor:
    """DPM-Solver-fast: ``n`` evaluations as third-order steps evenly spaced in t = -log sigma.

    Takes only a range and a count: given (txt2img: the model's range, ``steps``), or the ends and length of
    ``sigmas`` (img2img: the schedule's tail), as A1111 passes them.
    """
    eta = _eta(options, 1.0)
    sigma_max, sigma_min = _range(sigmas, sigma_max, sigma_min)
    nfe = len(sigmas) - 1 if n is None else n
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    solver = _DPMSolver(model, callback)
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, torch.Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = torch.minimum(t_end.to(ts), _t(sd))
            su = (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        eps = solver.eps(cache, "eps", x, t)
        _report(callback, i, x, _sigma(t), _sigma(t), x - _sigma(t) * eps)
        x = solver.step(order, x, t, t_next_, cache)
        if eta:
            x = x + su * options.s_noise * noise(_sigma(t), _sigma(t_next))
    return x


def sample_dpm_adaptive(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    accept_safety: float = 0.81,
    sigma_max: Tensor | float | None = None,
    sigma_min: Tensor | float | None = None,
    n: int | None = None,
) -> Tensor:
    """DPM-Solver-23 with adaptive step size (PID controller with the integral term only, as k-diffusion's).

    Takes only a range (see ``sample_dpm_fast``); ``n`` is ignored: it takes as many steps as its error allows.
    """
    eta = _eta(options, 1.0)
    sigma_max, sigma_min = _range(sigmas, sigma_max, sigma_min)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    solver = _DPMSolver(model, callback)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    # the controller: factor = limiter((1/err)^(1/order')); integral coefficient 1, others 0
    control_order = 1.5 if eta else order
    h = abs(h_init)
    s, x_prev, step = t_start, x, 0
    while s < t_end - 1e-5:
        cache: dict[str, torch.Tensor] = {}
        t = torch.minimum(t_end, s + h)
        if eta:
            sd, _ = ancestral_step(_sigma(s), _sigma(t), eta)
            t_ = torch.minimum(t_end, _t(sd))
            su = (_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        factor = (1 / (float(error) + 1e-8)) ** (1 / control_order)
        factor = 1 + math.atan(factor - 1)
        accept = factor >= accept_safety
        h *= factor
        if accept:
            x_prev = x_low
            x = x_high + su * options.s_noise * noise(_sigma(s), _sigma(t))
            s = t
        _report(callback, step, x, _sigma(s), _sigma(s), denoised)
        step += 1
    return x


def sample_restart(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    restart_list: dict[float, list[int]] | None = None,
) -> Tensor:
    """Restart sampling (Xu et al. 2023): Heun steps, with A1111's automatic restart segment for >= 20 steps.

    From 20 steps on, the main schedule is re-made as Karras over the same range with ``9 * 1`` (or
    ``steps // 4 * 2`` from 36 steps) fewer steps, and the interval around sigma 0.1 -> 2 is re-noised and
    walked again, so the model is called about as often as Heun's would be.
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        if steps >= 20:
            restart_steps, restart_times = 9, 1
            if steps >= 36:
                restart_steps, restart_times = steps // 4, 2
            main_steps = steps - restart_steps * restart_times
            sigmas = karras_sigmas(main_steps, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
        else:
            restart_list = {}
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            n_restart, times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                segment = karras_sigmas(n_restart, float(sigmas[min_idx]), float(sigmas[max_idx]))
                restart = segment.to(sigmas.device)[:-1]
                for _ in range(times):
                    plan.extend(zip(restart[:-1], restart[1:], strict=True))
    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(plan):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise(old_sigma, last_sigma) * options.s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, old_sigma)
        d = to_d(x, old_sigma, denoised)
        _report(callback, step_id, x, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, model(x_2, new_sigma))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def sample_lcm(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """Latent consistency: jump to the prediction, then re-noise to the next sigma with a fresh draw."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x


# --- A1111's timestep samplers, in the sigma formulation -------------------------------------------------------


def _vp(sigma: torch.Tensor) -> torch.Tensor:
    """alpha-bar of a noise level: x_vp = sqrt(alpha-bar) * x_sigma."""
    return 1 / (1 + sigma**2)


def _ddim(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
    cfg_pp: bool,
) -> Tensor:
    eta = _eta(options, 0.0)
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        eps = (x - denoised) / sigma
        direction = eps
        if cfg_pp and getattr(model, "last_uncond", None) is not None:
            direction = (x - model.last_uncond) / sigma  # CFG++: renoise along the unconditional prediction
        a, a_prev = _vp(sigma), _vp(sigma_prev)
        sigma_t = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        # in the variance-preserving latent: sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z; divided by sqrt(a')
        x = denoised + ((1 - a_prev - sigma_t**2) / a_prev) ** 0.5 * direction
        if eta:
            x = x + sigma_t / a_prev**0.5 * noise(sigma, sigma_prev)
        _report(callback, i, x, sigma, sigma, denoised)
    return x * _vp(sigmas[-1]) ** 0.5


def sample_ddim(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DDIM (Song et al. 2021); with eta 0 the Euler step in sigma. Returns the variance-preserving latent."""
    return _ddim(model, x, sigmas, noise, callback, options, cfg_pp=False)


def sample_ddim_cfgpp(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """DDIM CFG++ as A1111 implements it: guidance scale / 12.5 (set by the loop), renoising with the
    unconditional eps. That is A1111's approximation of Chung et al.'s CFG++, kept for identical results."""
    return _ddim(model, x, sigmas, noise, callback, options, cfg_pp=True)


def sample_plms(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """PLMS (Liu et al. 2022): Adams-Bashforth on eps up to fourth order, a Heun-like first step."""
    old_eps: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - model(x, sigma)) / sigma
        if not old_eps:
            x_next = x + (sigma_prev - sigma) * eps
            eps_next = (x_next - model(x_next, sigma_prev)) / sigma_prev
            eps_prime = (eps + eps_next) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        denoised = x - sigma * eps_prime
        x = denoised + sigma_prev * eps_prime
        old_eps.append(eps)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        _report(callback, i, x, sigma, sigma, denoised)
    return x * _vp(sigmas[-1]) ** 0.5


def sample_unipc(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource,
    callback: StepCallback | None,
    options: SamplerOptions,
) -> Tensor:
    """UniPC multistep (Zhao et al. 2023), data prediction, B(h) = h (bh1, A1111's default) or e^h - 1 (bh2).

    Works on the variance-preserving latent between the sigmas ``unipc_sigmas`` gives, with the corrector on
    every step but the last and lower orders for the first and (optionally) last steps, as A1111's uni_pc.
    """
    variant = options.uni_pc_variant
    if variant not in ("bh1", "bh2"):
        raise EaselError(f"UniPC variant {variant!r} is not supported; use bh1 or bh2.")
    steps = len(sigmas) - 1
    order = max(1, min(options.uni_pc_order, steps))
    alphas = _vp(sigmas) ** 0.5
    lambdas = -sigmas.log()

    def data(x_vp: torch.Tensor, k: int) -> torch.Tensor:
        return model(x_vp / alphas[k], sigmas[k])

    x = x * alphas[0]
    models = [data(x, 0)]
    indices = [0]
    for step in range(1, steps + 1):
        step_order = min(order, step)
        if options.uni_pc_lower_order_final:
            step_order = min(step_order, steps + 1 - step)
        use_corrector = step < steps
        x, model_t = _unipc_update(
            x, models, indices, step, step_order, sigmas, alphas, lambdas, variant, use_corrector, data
        )
        _report(callback, step - 1, x, sigmas[step], sigmas[step], models[-1] if model_t is None else model_t)
        indices.append(step)
        if step < steps:
            models.append(model_t if model_t is not None else data(x, step))
        if len(indices) > order:
            indices.pop(0)
            if len(models) > order:
                models.pop(0)
    return x


def _unipc_update(
    x: torch.Tensor,
    models: list[torch.Tensor],
    indices: list[int],
    k: int,
    order: int,
    sigmas: torch.Tensor,
    alphas: torch.Tensor,
    lambdas: torch.Tensor,
    variant: str,
    use_corrector: bool,
    data: Callable[[torch.Tensor, int], torch.Tensor],
) -> tuple[Tensor, Tensor | None]:
    """One UniPC step from ``indices[-1]`` to ``k``: UniP predictor, then the UniC corrector."""
    prev = indices[-1]
    m0 = models[-1]
    h = lambdas[k] - lambdas[prev]
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lambdas[indices[-(i + 1)]] - lambdas[prev]) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m0) / rk)
    rks.append(torch.ones_like(h))
    r = torch.stack(rks)
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r, b_vec = torch.stack(rows), torch.stack(b)
    sigma_vp_t, sigma_vp_prev = sigmas[k] * alphas[k], sigmas[prev] * alphas[prev]
    x_base = (sigma_vp_t / sigma_vp_prev) * x - alphas[k] * h_phi_1 * m0
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b_vec[:-1])
        pred = sum(rho * d for rho, d in zip(rhos_p.to(h), d1s, strict=True))
        x_t = x_base - alphas[k] * b_h * pred
    else:
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5]).to(h) if order == 1 else torch.linalg.solve(big_r, b_vec)
    model_t = data(x_t, k)
    corr = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0
    x_t = x_base - alphas[k] * b_h * (corr + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


# --- the sampler table ------------------------------------------------------------------------------------------

SamplerFunction = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: its function and the options A1111 gives it (``modules/sd_samplers_*.py``).

    ``kind``: "sigmas" (walks the schedule), "range" (DPM fast/adaptive: only the schedule's range and count),
    "timesteps" (DDIM/PLMS/UniPC: A1111's own timesteps, schedule ignored). ``second_order``: two model calls a
    step, so A1111 builds prompt-editing schedules over twice the steps. ``uses_ensd``: A1111 applies "Eta noise
    seed delta" to its noise. ``brownian``: A1111 draws its noise from a seeded Brownian tree. ``default_eta``:
    the eta A1111 uses when the request gives none ("Eta for ancestral samplers" 1, "Eta for DDIM" 0); A1111
    writes "Eta" into the infotext only when it differs.
    """

    label: str
    function: SamplerFunction
    aliases: tuple[str, ...] = ()
    default_schedule: str = "uniform"
    discard_next_to_last_sigma: bool = False
    second_order: bool = False
    uses_ensd: bool = False
    brownian: bool = False
    kind: str = "sigmas"
    lcm: bool = False
    cfg_scale_multiplier: float = 1.0
    default_eta: float = 1.0

    @property
    def name(self) -> str:
        return self.label

    def api_entry(self) -> dict[str, Any]:
        """/sdapi/v1/samplers' shape: name, aliases, options (as A1111 lists them)."""
        options: dict[str, Any] = {}
        if self.default_schedule != "uniform" and self.kind == "sigmas":
            options["scheduler"] = self.default_schedule
        if self.discard_next_to_last_sigma:
            options["discard_next_to_last_sigma"] = True
        if self.second_order:
            options["second_order"] = True
        if self.uses_ensd:
            options["uses_ensd"] = True
        if self.brownian:
            options["brownian_noise"] = True
        return {"name": self.label, "aliases": list(self.aliases), "options": {k: str(v) for k, v in options.items()}}


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), default_schedule="karras"),
    SamplerSpec(
        "DPM++ SDE", sample_dpmpp_sde, ("k_dpmpp_sde",), default_schedule="karras", second_order=True, brownian=True
    ),
    SamplerSpec(
        "DPM++ 2M SDE", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_schedule="exponential", brownian=True
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun",
        sample_dpmpp_2m_sde_heun,
        ("k_dpmpp_2m_sde_heun",),
        default_schedule="exponential",
        brownian=True,
    ),
    SamplerSpec(
        "DPM++ 2S a",
        sample_dpmpp_2s_ancestral,
        ("k_dpmpp_2s_a",),
        default_schedule="karras",
        uses_ensd=True,
        second_order=True,
    ),
    SamplerSpec(
        "DPM++ 3M SDE",
        sample_dpmpp_3m_sde,
        ("k_dpmpp_3m_sde",),
        default_schedule="exponential",
        discard_next_to_last_sigma=True,
        brownian=True,
    ),
    SamplerSpec("Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
    SamplerSpec("Euler", sample_euler, ("k_euler",)),
    SamplerSpec("LMS", sample_lms, ("k_lms",)),
    SamplerSpec("Heun", sample_heun, ("k_heun",), second_order=True),
    SamplerSpec(
        "DPM2",
        sample_dpm_2,
        ("k_dpm_2",),
        default_schedule="karras",
        discard_next_to_last_sigma=True,
        second_order=True,
    ),
    SamplerSpec(
        "DPM2 a",
        sample_dpm_2_ancestral,
        ("k_dpm_2_a",),
        default_schedule="karras",
        discard_next_to_last_sigma=True,
        uses_ensd=True,
        second_order=True,
    ),
    SamplerSpec("DPM fast", sample_dpm_fast, ("k_dpm_fast",), uses_ensd=True, kind="range"),
    SamplerSpec("DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), uses_ensd=True, kind="range"),
    SamplerSpec("Restart", sample_restart, ("restart",), default_schedule="karras", second_order=True),
    SamplerSpec("LCM", sample_lcm, ("k_lcm",), lcm=True),
    SamplerSpec("DDIM", sample_ddim, ("ddim",), kind="timesteps", default_eta=0.0),
    SamplerSpec(
        "DDIM CFG++",
        sample_ddim_cfgpp,
        ("ddim_cfgpp",),
        kind="timesteps",
        cfg_scale_multiplier=1 / 12.5,
        default_eta=0.0,
    ),
    SamplerSpec("PLMS", sample_plms, ("plms",), kind="timesteps", default_eta=0.0),
    SamplerSpec("UniPC", sample_unipc, ("unipc",), kind="timesteps", default_eta=0.0),
)


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


_BY_KEY: dict[str, SamplerSpec] = {}
for _spec in SAMPLERS:
    for _spelling in (_spec.label, *_spec.aliases):
        _BY_KEY[_key(_spelling)] = _spec


def resolve_sampler(name: str) -> SamplerSpec:
    """A sampler by A1111 label ("Euler a") or alias ("k_euler_a"), in any case."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        raise EaselError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(s.label for s in SAMPLERS)}.")
    return found


# --- timesteps of A1111's timestep samplers ----------------------------------------------------------------------


def a1111_timesteps(steps: int, discard_next_to_last: bool = False) -> torch.Tensor:
    """A1111's DDIM/PLMS/UniPC timesteps, ascending: ``range(0, 1000, 1000 // steps) + 1`` clipped to 999."""
    steps += 1 if discard_next_to_last else 0
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def timestep_sigmas(model: ModelSigmas, timesteps: torch.Tensor) -> torch.Tensor:
    """The training sigmas at ``timesteps``, descending: what DDIM/PLMS walk (len(timesteps) - 1 steps)."""
    return model.sigmas[timesteps.flip(0)].clone()


def unipc_sigmas(model: ModelSigmas, steps: int, t_start: float = 1.0) -> torch.Tensor:
    """UniPC's ``steps + 1`` noise levels: uni_pc's continuous time, uniform from ``t_start`` to 1/N.

    uni_pc maps discrete step n to time (n + 1) / N and interpolates log(alpha) linearly in between.
    """
    n = len(model)
    times = torch.linspace(t_start, 1.0 / n, steps + 1)
    grid = torch.linspace(0.0, 1.0, n + 1)[1:]
    log_alpha = 0.5 * model.alphas_cumprod.log()
    position = (times - grid[0]) / (grid[1] - grid[0])  # fractional index into the grid
    low = position.floor().long().clamp(0, n - 2)
    w = position - low
    log_alpha_t = log_alpha[low] * (1 - w) + log_alpha[low + 1] * w
    alpha_sq = torch.exp(2 * log_alpha_t)
    return ((1 - alpha_sq) / alpha_sq) ** 0.5


# --- noise sources ----------------------------------------------------------------------------------------------


class GeneratorNoise:
    """Each image's own generator, continued: A1111's ImageRNG after the initial noise was drawn from it."""

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.generators = list(generators)
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.dtype = dtype

    def __call__(self, sigma: torch.Tensor | None = None, sigma_next: torch.Tensor | None = None) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g, device=g.device, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)


class BrownianTreeNoise:
    """Noise from one seeded Brownian tree per image (torchsde), normalised to unit variance per interval.

    The same seed gives the same path whatever the batch or step count, which is why A1111 uses it for the SDE
    samplers. The tree spans [sigma_min, sigma_max] of the full schedule, as A1111 builds it.
    """

    def __init__(
        self, x: torch.Tensor, sigma_min: torch.Tensor | float, sigma_max: torch.Tensor | float, seeds: Sequence[int]
    ) -> None:
        import torchsde

        if len(seeds) != x.shape[0]:
            raise ValueError("one Brownian tree seed per image")
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self._sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        self._bounds = (float(t0), float(t1))
        w0 = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if t0 < t1 else -1
        lo, hi = (float(t0), float(t1)) if t0 < t1 else (float(t1), float(t0))
        # clamp as torchsde would (sigma -> -log -> exp round trips overshoot by an ulp), without its warning
        start, end = self._bounds
        lo, hi = min(max(lo, start), end), min(max(hi, start), end)
        with warnings.catch_warnings():  # torchsde compares float32 bounds with float64 times and warns on an ulp
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self._sign * sign)
        return w / (t1 - t0).abs().sqrt()
