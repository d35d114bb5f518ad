"""A1111's schedule types: (steps, the model's training sigmas) -> the list of sigmas a sampler walks.

A schedule is a pure function of the step count and the model's discrete noise levels, so any sampler can walk any
schedule (DESIGN.md section 13). Every function returns ``n + 1`` float32 sigmas on the CPU, decreasing, the last one
0 -- except ``ddim``, which follows A1111 in striding the training sigmas by ``1000 // n`` and so yields more than
``n`` steps when ``n`` does not divide 1000.

Two deliberate choices, where A1111's code and the design differ (both are one-line changes):

- KL Optimal: A1111 returns ``n + 1`` values ending at sigma_min (no final 0, so its images keep sigma_min of noise);
  here the arctan blend runs over ``n`` points ending at sigma_min and a 0 is appended, as ComfyUI does.
- Align Your Steps: A1111 log-linearly resamples NVIDIA's 11-value table to ``n`` points and appends 0, so the table
  is used verbatim at ``n == 11`` (NVIDIA's "10 steps" plus the last step to 0). That is kept exactly.

The model's sigmas come from its scheduler config (betas, ``rescale_betas_zero_snr``), computed in float64 and
stored in float32 as the original LDM code stores ``alphas_cumprod``, so they match A1111's to the last bit.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.errors import EaselError

# A1111 (modules/sd_models.py): the terminal alpha-bar of a zero-terminal-SNR model, so sigma_max stays finite.
ZERO_SNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08

AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)

LCM_ORIGINAL_STEPS = 50  # the timesteps an LCM was distilled on (A1111's LCMCompVisDenoiser)


def _betas(config: Mapping[str, Any]) -> np.ndarray:
    """The training betas of a diffusers scheduler config, in float64."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        return np.asarray(trained, dtype=np.float64)
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        return np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "squaredcos_cap_v2":
        steps = np.arange(n + 1, dtype=np.float64) / n
        alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise EaselError(f"Unsupported beta schedule {kind!r} in the model's scheduler config.")


def _rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, algorithm 1: shift and scale sqrt(alpha-bar) so the last step is pure noise."""
    root = np.sqrt(alphas_cumprod)
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    return root**2


class ModelSigmas:
    """The model's discrete noise levels, ascending: ``sigmas[t] = sqrt((1 - acp[t]) / acp[t])`` for timestep t.

    Also k-diffusion's ``DiscreteSchedule`` conversions (log-sigma interpolation), which the schedules that need
    "the inner model" and the denoiser share, so a schedule's sigmas and the timesteps the UNet sees agree.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, is_sdxl: bool = False) -> None:
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.is_sdxl = is_sdxl
        self._log_sigmas_by_device: dict[torch.device, torch.Tensor] = {}
        self._log_sigma_list: list[float] | None = None

    def _log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        """The log-sigma table on ``device``, copied there once (the denoiser converts sigma -> t every call)."""
        if device.type == "cpu":
            return self.log_sigmas
        if device not in self._log_sigmas_by_device:
            self._log_sigmas_by_device[device] = self.log_sigmas.to(device)
        return self._log_sigmas_by_device[device]

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any], is_sdxl: bool = False) -> ModelSigmas:
        """From a diffusers ``scheduler_config.json`` (any scheduler class: only the beta fields are read)."""
        alphas_cumprod = np.cumprod(1.0 - _betas(config))
        if config.get("rescale_betas_zero_snr", False):
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
            alphas_cumprod[-1] = ZERO_SNR_LAST_ALPHA_CUMPROD
        return cls(torch.from_numpy(alphas_cumprod).to(torch.float32), is_sdxl=is_sdxl)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __len__(self) -> int:
        return int(self.sigmas.shape[0])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of each sigma: linear interpolation in log-sigma between neighbouring steps."""
        sigma = torch.as_tensor(sigma)
        if sigma.dim() == 0 and sigma.device.type == "cpu":
            return torch.tensor(self._scalar_sigma_to_t(float(sigma)), dtype=torch.float32)
        log_sigma = sigma.float().log()
        log_sigmas = self._log_sigmas_on(log_sigma.device)
        # the last training step at or below sigma (k-diffusion's ge/cumsum/argmax, in one search)
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(self) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def _scalar_sigma_to_t(self, sigma: float) -> float:
        """``sigma_to_t`` for one sigma in plain floats: a dozen fewer tensor ops per model call."""
        if self._log_sigma_list is None:
            self._log_sigma_list = self.log_sigmas.tolist()
        table = self._log_sigma_list
        log_sigma = float(np.float32(math.log(sigma))) if sigma > 0 else -math.inf
        low = min(max(bisect.bisect_right(table, log_sigma) - 1, 0), len(table) - 2)
        lo, hi = table[low], table[low + 1]
        w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self._log_sigmas_on(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the UNet is given at ``sigma`` (the continuous one; LCM quantizes)."""
        return self.sigma_to_t(sigma)

    def get_sigmas(self, n: int) -> torch.Tensor:
        """k-diffusion's uniform schedule: ``n`` timesteps evenly from the last training step to 0, then 0."""
        t = torch.linspace(len(self) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))

    def lcm(self) -> LCMSigmas:
        return LCMSigmas(self)


class LCMSigmas(ModelSigmas):
    """The 50 noise levels an LCM was distilled on (every 20th step, ending at step 999), as A1111's LCM uses."""

    def __init__(self, base: ModelSigmas) -> None:
        n = len(base)
        self.skip = n // LCM_ORIGINAL_STEPS
        picks = [n - 1 - i * self.skip for i in range(LCM_ORIGINAL_STEPS)][::-1]
        super().__init__(base.alphas_cumprod[picks], is_sdxl=base.is_sdxl)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest distilled step, as a timestep of the full 1000-step model (A1111: quantized)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(-1) - self._log_sigmas_on(sigma.device)[:, None]
        index = dists.abs().argmin(dim=0).reshape(sigma.shape)
        return (index * self.skip + (self.skip - 1)).to(torch.float32)


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


ScheduleFunction = Callable[[int, ModelSigmas], torch.Tensor]


def uniform(n: int, model: ModelSigmas) -> torch.Tensor:
    return model.get_sigmas(n)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): ``n`` sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def karras(n: int, model: ModelSigmas, rho: float = 7.0) -> torch.Tensor:
    return karras_sigmas(n, model.sigma_min, model.sigma_max, rho)


def exponential(n: int, model: ModelSigmas) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n).exp())


def polyexponential(n: int, model: ModelSigmas, rho: float = 1.0) -> torch.Tensor:
    """Log sigma following a polynomial ramp of degree rho (rho 1 is exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    return _append_zero(torch.exp(ramp * (hi - lo) + lo))


def _linear_in_t(n_points: int, model: ModelSigmas, drop_last: bool) -> torch.Tensor:
    start = model.sigma_to_t(torch.tensor(model.sigma_max))
    end = model.sigma_to_t(torch.tensor(model.sigma_min))
    t = torch.linspace(float(start), float(end), n_points)
    if drop_last:
        t = t[:-1]
    return _append_zero(torch.stack([model.t_to_sigma(ts) for ts in t]).to(torch.float32))


def sgm_uniform(n: int, model: ModelSigmas) -> torch.Tensor:
    """Timesteps linear from sigma_max's to sigma_min's, ``n + 1`` of them with the last dropped (SGM's)."""
    return _linear_in_t(n + 1, model, drop_last=True)


def normal(n: int, model: ModelSigmas) -> torch.Tensor:
    """Timesteps linear from sigma_max's to sigma_min's, ``n`` of them (ComfyUI's "normal")."""
    return _linear_in_t(n, model, drop_last=False)


def simple(n: int, model: ModelSigmas) -> torch.Tensor:
    """Every ``len/n``-th training sigma from the top."""
    stride = len(model) / n
    picked = [float(model.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim(n: int, model: ModelSigmas) -> torch.Tensor:
    """Every ``len // n``-th training sigma from index 1, reversed (the original DDIM's discretization)."""
    stride = max(len(model) // n, 1)
    picked = [float(model.sigmas[i]) for i in range(1, len(model), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def kl_optimal(n: int, model: ModelSigmas) -> torch.Tensor:
    """Sigma = tan of a linear blend of arctan(sigma_max)..arctan(sigma_min) (Sabour et al. 2024)."""
    if n == 1:
        return torch.tensor([model.sigma_max, 0.0], dtype=torch.float32)
    w = torch.arange(n, dtype=torch.float32) / (n - 1)
    alpha_min, alpha_max = math.atan(model.sigma_min), math.atan(model.sigma_max)
    return _append_zero(torch.tan(w * alpha_min + (1 - w) * alpha_max))


def _loglinear_resample(values: np.ndarray, n: int) -> np.ndarray:
    """Decreasing ``values`` resampled to ``n`` points, linearly in log space (NVIDIA's AYS how-to)."""
    xs = np.linspace(0, 1, len(values))
    ys = np.log(values[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()


def align_your_steps(n: int, model: ModelSigmas) -> torch.Tensor:
    """NVIDIA's Align Your Steps table for the model family, resampled to ``n`` points as A1111 does, then 0."""
    table = AYS_SDXL if model.is_sdxl else AYS_SD1
    values = np.asarray(table, dtype=np.float64) if n == len(table) else _loglinear_resample(np.asarray(table), n)
    return torch.tensor([*values.tolist(), 0.0], dtype=torch.float32)


def beta(n: int, model: ModelSigmas, alpha: float = 0.6, beta_param: float = 0.6) -> torch.Tensor:
    """Lee et al. 2024: timesteps at the quantiles of Beta(alpha, beta), mapped into [sigma_min, sigma_max]."""
    from scipy import stats

    quantiles = 1 - np.linspace(0, 1, n)
    points = [float(stats.beta.ppf(q, alpha, beta_param)) for q in quantiles]
    lo, hi = model.sigma_min, model.sigma_max
    return torch.tensor([lo + p * (hi - lo) for p in points] + [0.0], dtype=torch.float32)


@dataclass(frozen=True)
class Schedule:
    """One schedule type, as /sdapi/v1/schedulers lists it (A1111's ``modules/sd_schedulers.Scheduler``)."""

    name: str
    label: str
    function: ScheduleFunction | None  # None: "Automatic", resolved by the sampler
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] = ()

    def api_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) or None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic", None),
    Schedule("uniform", "Uniform", uniform, need_inner_model=True),
    Schedule("karras", "Karras", karras, default_rho=7.0),
    Schedule("exponential", "Exponential", exponential),
    Schedule("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", sgm_uniform, need_inner_model=True, aliases=("SGMUniform",)),
    Schedule("kl_optimal", "KL Optimal", kl_optimal),
    Schedule("align_your_steps", "Align Your Steps", align_your_steps),
    Schedule("simple", "Simple", simple, need_inner_model=True),
    Schedule("normal", "Normal", normal, need_inner_model=True),
    Schedule("ddim", "DDIM", ddim, need_inner_model=True),
    Schedule("beta", "Beta", beta, need_inner_model=True),
)


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


_BY_KEY: dict[str, Schedule] = {}
for _schedule in SCHEDULES:
    for _spelling in (_schedule.name, _schedule.label, *_schedule.aliases):
        _BY_KEY[_key(_spelling)] = _schedule


def resolve(label_or_name: str) -> Schedule:
    """A schedule by its A1111 label ("SGM Uniform"), API name ("sgm_uniform") or alias, in any case."""
    found = _BY_KEY.get(_key(label_or_name or "automatic"))
    if found is None:
        labels = ", ".join(s.label for s in SCHEDULES)
        raise EaselError(f"Unknown schedule type {label_or_name!r}. Valid schedule types: {labels}.")
    return found


def compute_sigmas(
    schedule: Schedule | str,
    n: int,
    model: ModelSigmas,
    rho: float | None = None,
    beta_params: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``schedule``'s sigmas for ``n`` steps. "Automatic" must be resolved to the sampler's default first.

    ``beta_params``: the Beta schedule's alpha and beta (A1111's settings ``beta_dist_alpha``/``beta_dist_beta``).
    """
    spec = resolve(schedule) if isinstance(schedule, str) else schedule
    if spec.function is None:
        raise ValueError("'Automatic' is resolved per sampler; ask the sampler table for its default schedule")
    if n < 1:
        raise EaselError("A schedule needs at least one step.")
    if rho is not None and spec.default_rho != -1.0:
        return spec.function(n, model, rho)  # type: ignore[call-arg]
    if beta_params is not None and spec.function is beta:
        return beta(n, model, *beta_params)
    return spec.function(n, model)
