"""Easel's sampling core against references, on tiny random-weight UNets with fixed noise.

References: k-diffusion's own ``sampling.py``/``external.py`` (the wheel, test-only, see ``kdiffusion_reference``)
behind an A1111-style CFG denoiser, for every k-diffusion sampler x schedule; diffusers' DDIM/PNDM/UniPC schedulers
for A1111's timestep samplers (same timesteps); small transcriptions of A1111's LCM, Restart and DDIM CFG++ loops.
Agreement is measured as PSNR of the final latents. Measured here: 125 dB or more everywhere, i.e. float32 round-off
(the Brownian-tree SDE samplers too: both sides query the same seeded torchsde trees). The threshold is 70 dB;
``test_deliberately_wrong_variants_fail`` shows a wrong schedule, A1111's ``sqrt(sigma^2 + 1)`` initial-noise
mistake and a fresh generator for the ancestral noise all score below it (17-67 dB on these models).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.errors import EaselError
from pipelines.sampling.denoiser import (
    Conditioning,
    ModelInputs,
    SamplingHooks,
    SamplingState,
    UNetDenoiser,
    with_residuals,
)
from pipelines.sampling.k_samplers import SAMPLERS, GeneratorNoise, resolve_sampler
from pipelines.sampling.loop import img2img_start, plan, resolve_schedule, sample
from pipelines.sampling.schedules import ModelSigmas, compute_sigmas
from tests import kdiffusion_reference

THRESHOLD_DB = 70.0
STEPS = 5
SEEDS = (11, 12)
CFG_SCALE = 6.0
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

# the reference's own Brownian trees warn when sigma round trips overshoot their ends by an ulp (Easel's clamp)
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning", "ignore:To copy construct:UserWarning")

REFERENCE = kdiffusion_reference.load()
needs_reference = pytest.mark.skipif(
    REFERENCE is None, reason="k-diffusion reference not installed: pip install --no-deps k-diffusion"
)

# A1111's sampler table: label -> k-diffusion function (modules/sd_samplers_kdiffusion.py).
K_FUNCTIONS = {
    "DPM++ 2M": "sample_dpmpp_2m",
    "DPM++ SDE": "sample_dpmpp_sde",
    "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde",
    "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
    "Euler a": "sample_euler_ancestral",
    "Euler": "sample_euler",
    "LMS": "sample_lms",
    "Heun": "sample_heun",
    "DPM2": "sample_dpm_2",
    "DPM2 a": "sample_dpm_2_ancestral",
    "DPM fast": "sample_dpm_fast",
    "DPM adaptive": "sample_dpm_adaptive",
}
SCHEDULE_SAMPLERS = [label for label in K_FUNCTIONS if label not in ("DPM fast", "DPM adaptive")]


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((x.double() - reference.double()) ** 2).mean())
    peak = float(reference.abs().max())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def ldm_alphas_cumprod() -> torch.Tensor:
    """Written independently of ``ModelSigmas``: float64 betas and cumprod, stored in float32 (as LDM does)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class CompVisAdapter:
    """What k-diffusion's CompVis wrappers call: ``apply_model(x, t, cond)`` over a diffusers UNet."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.alphas_cumprod = ldm_alphas_cumprod()

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        if cond.get("c_concat") is not None:
            x = torch.cat([x, cond["c_concat"]], dim=1)
        kwargs = {"added_cond_kwargs": cond["added"]} if cond.get("added") is not None else {}
        return self.unet(x, t, encoder_hidden_states=cond["c_crossattn"], **kwargs).sample


class ReferenceCFG:
    """A1111's CFGDenoiser, reduced to one prompt: ``[cond, uncond]`` in one batch, combined on denoised."""

    def __init__(self, inner: Any, cond: dict[str, Any], uncond: dict[str, Any], scale: float) -> None:
        self.inner, self.cond, self.uncond, self.scale = inner, cond, uncond, scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        both: dict[str, Any] = {}
        for key, value in self.cond.items():
            if isinstance(value, dict):
                both[key] = {k: torch.cat([value[k], self.uncond[key][k]]) for k in value}
            elif value is not None:
                both[key] = torch.cat([value, self.uncond[key]])
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=both)
        cond_d, uncond_d = out.chunk(2)
        return uncond_d + (cond_d - uncond_d) * self.scale


def generators(seeds: Sequence[int] = SEEDS) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def first_draw(gens: Sequence[torch.Generator], shape: tuple[int, ...] = (4, 8, 8)) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


@dataclass
class Rig:
    """One tiny UNet, its conditioning, Easel's denoiser and the reference's."""

    unet: Any
    denoiser: UNetDenoiser
    cond: torch.Tensor
    uncond: torch.Tensor
    reference: Any = None  # k-diffusion's CompVisDenoiser over the adapter

    def conditioning(self) -> Conditioning:
        return Conditioning(self.cond, self.uncond)

    def mine(self, sampler: str, schedule: str | None, steps: int = STEPS, **kwargs: Any) -> torch.Tensor:
        gens = generators()
        noise = first_draw(gens)
        return sample(
            self.denoiser,
            sampler,
            schedule,
            steps,
            noise,
            kwargs.pop("conditioning", self.conditioning()),
            CFG_SCALE,
            GeneratorNoise(gens, (4, 8, 8)),
            brownian_seeds=SEEDS,
            **kwargs,
        )

    def reference_cfg(self) -> ReferenceCFG:
        return ReferenceCFG(self.reference, {"c_crossattn": self.cond}, {"c_crossattn": self.uncond}, CFG_SCALE)

    def reference_sigmas(self, schedule: str, n: int) -> torch.Tensor:
        ks = REFERENCE.sampling
        sigma_min, sigma_max = self.reference.sigmas[0].item(), self.reference.sigmas[-1].item()
        if schedule == "uniform":
            return self.reference.get_sigmas(n)
        if schedule == "karras":
            return ks.get_sigmas_karras(n, sigma_min, sigma_max)
        assert schedule == "exponential"
        return ks.get_sigmas_exponential(n, sigma_min, sigma_max)

    def k_reference(
        self,
        label: str,
        schedule: str | None,
        steps: int = STEPS,
        wrong: str | None = None,
        init: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """A1111's KDiffusionSampler.sample/sample_img2img around k-diffusion's own sampler function."""
        ks = REFERENCE.sampling
        spec = resolve_sampler(label)
        name = resolve_schedule(spec, schedule).name
        if wrong == "schedule":
            name = {"karras": "exponential", "exponential": "uniform", "uniform": "karras"}[name]
        sigmas = self.reference_sigmas(name, steps + (1 if spec.discard_next_to_last_sigma else 0))
        if spec.discard_next_to_last_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        full = sigmas
        sigmas = sigmas[start:] if init is not None else sigmas
        gens = generators()
        noise = first_draw(gens)
        scale = (sigmas[0] ** 2 + 1) ** 0.5 if wrong == "init" else sigmas[0]
        x = noise * scale if init is None else init + noise * scale
        source = GeneratorNoise(generators() if wrong == "fresh" else gens, (4, 8, 8))
        kdiffusion_reference.with_noise(ks, source)
        function = getattr(ks, K_FUNCTIONS[label])
        parameters = inspect.signature(function).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in parameters:
            kwargs["eta"] = 1.0  # A1111's "Eta for ancestral samplers"
        if spec.brownian:
            kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, full[full > 0].min(), full.max(), seed=list(SEEDS))
        if label == "DPM++ 2M SDE Heun":
            kwargs["solver_type"] = "heun"
        if "sigmas" in parameters:
            kwargs["sigmas"] = sigmas
        elif init is None:
            kwargs.update(sigma_min=self.reference.sigmas[0].item(), sigma_max=self.reference.sigmas[-1].item())
            if "n" in parameters:
                kwargs["n"] = steps
        else:
            kwargs.update(sigma_min=sigmas[-2], sigma_max=sigmas[0])
            if "n" in parameters:
                kwargs["n"] = len(sigmas) - 1
        with torch.no_grad():
            return function(self.reference_cfg(), x, disable=True, **kwargs)

    def eps(self, x: torch.Tensor, t: Any, scale_multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided and unconditional eps at timestep ``t`` for the variance-preserving latent ``x``."""
        t = torch.as_tensor(t).float().reshape(-1).expand(2 * x.shape[0])
        with torch.no_grad():
            out = self.unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([self.cond, self.uncond])
            ).sample.float()
        cond, uncond = out.chunk(2)
        return uncond + (cond - uncond) * CFG_SCALE * scale_multiplier, uncond


def make_rig(unet: Any, prediction_type: str = "epsilon", cross: int = 64) -> Rig:
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(2, 77, cross, generator=g), torch.randn(2, 77, cross, generator=g)
    sigmas = ModelSigmas.from_scheduler_config(SD_BETAS)
    rig = Rig(unet, UNetDenoiser(unet, sigmas, prediction_type), cond, uncond)
    if REFERENCE is not None:
        wrapper = REFERENCE.external.CompVisVDenoiser if prediction_type == "v_prediction" else None
        wrapper = wrapper or REFERENCE.external.CompVisDenoiser
        rig.reference = wrapper(CompVisAdapter(unet))
    return rig


@pytest.fixture(scope="module")
def rig(tiny: Any) -> Rig:
    return make_rig(tiny.components("sd1")["unet"])


# --- the sampler table ------------------------------------------------------------------------------------------


def test_sampler_table_follows_a1111() -> None:
    labels = [s.label for s in SAMPLERS]
    assert len(labels) == len(set(labels)) == 20
    karras = {"DPM++ 2M", "DPM++ SDE", "DPM++ 2S a", "DPM2", "DPM2 a", "Restart"}
    exponential = {"DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    for spec in SAMPLERS:
        expected = "karras" if spec.label in karras else "exponential" if spec.label in exponential else "uniform"
        assert spec.default_schedule == expected, spec.label
        assert resolve_schedule(spec, "Automatic").name == expected
    assert {s.label for s in SAMPLERS if s.discard_next_to_last_sigma} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    assert {s.label for s in SAMPLERS if s.brownian} == {
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
    }
    assert resolve_sampler("k_euler_a").label == "Euler a" == resolve_sampler("EULER A").label
    assert resolve_sampler("k_dpmpp_2m").api_entry() == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    with pytest.raises(EaselError, match="Unknown sampler 'Euler b'"):
        resolve_sampler("Euler b")


def test_automatic_uses_the_samplers_default_and_dpm2_drops_the_next_to_last_sigma() -> None:
    model = ModelSigmas.from_scheduler_config(SD_BETAS)
    dpm2 = plan(resolve_sampler("DPM2"), "Automatic", 10, model)
    karras11 = compute_sigmas("karras", 11, model)
    torch.testing.assert_close(dpm2.sigmas, torch.cat([karras11[:-2], karras11[-1:]]))
    assert dpm2.total_steps == 10
    euler = plan(resolve_sampler("Euler"), None, 10, model)
    torch.testing.assert_close(euler.sigmas, model.get_sigmas(10))
    ddim = plan(resolve_sampler("DDIM"), "Karras", 10, model)  # timestep samplers ignore the schedule type
    assert ddim.schedule is None and ddim.total_steps == 9  # A1111 stops at timestep 1, one short of 10
    torch.testing.assert_close(ddim.sigmas, model.sigmas[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]])


def test_img2img_start_counts_like_a1111() -> None:
    assert img2img_start(20, 0.5) == (20, 9)  # t_enc 10: the last 11 steps run
    assert img2img_start(20, 1.0) == (20, 0)  # strength clamps at 0.999: t_enc 19, the whole schedule
    assert img2img_start(10, 0.5, fix_steps=True) == (20, 10)  # "img2img does exactly the steps"


# --- against k-diffusion ----------------------------------------------------------------------------------------


@needs_reference
@pytest.mark.parametrize("schedule", ["Karras", "Exponential", "Uniform"])
@pytest.mark.parametrize("sampler", SCHEDULE_SAMPLERS)
def test_k_sampler_matches_k_diffusion(rig: Rig, sampler: str, schedule: str) -> None:
    assert psnr(rig.mine(sampler, schedule), rig.k_reference(sampler, schedule)) > THRESHOLD_DB


@needs_reference
@pytest.mark.parametrize("sampler", ["DPM fast", "DPM adaptive"])
def test_range_samplers_match_k_diffusion(rig: Rig, sampler: str) -> None:
    assert psnr(rig.mine(sampler, "Automatic"), rig.k_reference(sampler, "Automatic")) > THRESHOLD_DB


@needs_reference
def test_deliberately_wrong_variants_fail(rig: Rig) -> None:
    mine = rig.mine("DPM++ 2M", "Karras")
    assert psnr(mine, rig.k_reference("DPM++ 2M", "Karras", wrong="schedule")) < THRESHOLD_DB
    assert psnr(mine, rig.k_reference("DPM++ 2M", "Karras", wrong="init")) < THRESHOLD_DB
    ancestral = rig.mine("Euler a", "Automatic")
    assert psnr(ancestral, rig.k_reference("Euler a", "Automatic")) > THRESHOLD_DB
    assert psnr(ancestral, rig.k_reference("Euler a", "Automatic", wrong="fresh")) < THRESHOLD_DB
    assert psnr(ancestral, rig.k_reference("Euler a", "Automatic", wrong="init")) < THRESHOLD_DB


@needs_reference
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM fast"])
def test_img2img_walks_the_tail_of_the_schedule(rig: Rig, sampler: str) -> None:
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    total, start = img2img_start(STEPS, 0.6)
    mine = rig.mine(sampler, "Automatic", total, init_latents=init, start_at_step=start)
    assert psnr(mine, rig.k_reference(sampler, "Automatic", total, init=init, start=start)) > THRESHOLD_DB


# --- A1111's timestep samplers, LCM, Restart, CFG++ ---------------------------------------------------------------


def _diffusers_loop(rig: Rig, scheduler: Any, timesteps: Sequence[Any], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for t in timesteps:
            x = scheduler.step(rig.eps(x, t)[0], t, x).prev_sample
    return x


def test_ddim_matches_diffusers_on_a1111_timesteps(rig: Rig) -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(STEPS)  # "leading" + offset 1: 801, 601, ..., 1 as A1111's range(0, 1000, 200) + 1
    # A1111 stops at timestep 1 without evaluating it: the output is the latent at t = 1
    reference = _diffusers_loop(rig, scheduler, scheduler.timesteps[:-1], first_draw(generators()))
    assert psnr(rig.mine("DDIM", "Karras"), reference) > THRESHOLD_DB


def test_ddim_img2img_noises_to_the_step_above_like_a1111(rig: Rig) -> None:
    from diffusers import DDIMScheduler

    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    total, start = img2img_start(STEPS, 0.6)
    t_enc = total - 1 - start
    timesteps = torch.arange(0, 1000, 1000 // total) + 1
    acp = ldm_alphas_cumprod()[timesteps[t_enc]]
    x = init * acp**0.5 + first_draw(generators()) * (1 - acp) ** 0.5
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(total)
    reference = _diffusers_loop(rig, scheduler, timesteps[:t_enc].flip(0)[:-1], x)
    mine = rig.mine("DDIM", None, total, init_latents=init, start_at_step=start)
    assert psnr(mine, reference) > THRESHOLD_DB


def test_plms_matches_diffusers_pndm(rig: Rig) -> None:
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(STEPS)  # 801, 601, 601 (PLMS's first, Heun-like step), 401, 201, 1
    reference = _diffusers_loop(rig, scheduler, scheduler.timesteps[:-1], first_draw(generators()))
    assert psnr(rig.mine("PLMS", None), reference) > THRESHOLD_DB


def test_unipc_matches_diffusers_on_a1111_continuous_times(rig: Rig) -> None:
    from diffusers import UniPCMultistepScheduler

    # A1111's uni_pc: time uniform from 1 to 1/N, log-alpha interpolated between training steps, bh1, order 3
    times = np.linspace(1.0, 0.001, STEPS + 1)
    log_alpha = np.interp(times, (np.arange(1000) + 1) / 1000, 0.5 * np.log(ldm_alphas_cumprod().double().numpy()))
    sigmas = np.sqrt(1 - np.exp(2 * log_alpha)) / np.exp(log_alpha)
    scheduler = UniPCMultistepScheduler(**SD_BETAS, solver_order=3, solver_type="bh1", lower_order_final=True)
    scheduler.set_timesteps(STEPS)
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
    scheduler.timesteps = torch.tensor((times[:-1] - 0.001) * 1000, dtype=torch.float32)
    reference = _diffusers_loop(rig, scheduler, scheduler.timesteps, first_draw(generators()))
    assert psnr(rig.mine("UniPC", None), reference) > THRESHOLD_DB


def test_ddim_cfgpp_matches_a1111s_formulation(rig: Rig) -> None:
    timesteps = torch.arange(0, 1000, 1000 // STEPS) + 1
    acp = ldm_alphas_cumprod().double()
    x = first_draw(generators()).double()
    for index in range(len(timesteps) - 1, 0, -1):  # A1111 ddim_cfgpp: scale / 12.5, renoise along uncond eps
        a, a_prev = acp[timesteps[index]], acp[timesteps[index - 1]]
        guided, uncond = rig.eps(x.float(), timesteps[index], 1 / 12.5)
        x0 = (x - (1 - a).sqrt() * guided) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * uncond
    assert psnr(rig.mine("DDIM CFG++", None), x.float()) > THRESHOLD_DB


@needs_reference
def test_lcm_matches_a1111s_lcm_denoiser(rig: Rig) -> None:
    ks, base = REFERENCE.sampling, REFERENCE.external.DiscreteEpsDDPMDenoiser
    skip = 20
    distilled = ldm_alphas_cumprod()[[999 - i * skip for i in range(50)][::-1]]

    class LCMReference(base):  # A1111 modules/sd_samplers_lcm.LCMCompVisDenoiser, facts transcribed
        def sigma_to_t(self, sigma: torch.Tensor, quantize: Any = None) -> torch.Tensor:
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)

        def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
            return super().t_to_sigma(torch.clamp(((t - (skip - 1)) / skip).float(), 0, len(self.sigmas) - 1))

        def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            c_out, c_in = (s[:, None, None, None] for s in self.get_scalings(sigma))
            t = self.sigma_to_t(sigma)
            eps = rig.unet(x * c_in, t, encoder_hidden_states=cond).sample
            scaled = t[:, None, None, None] * 10.0
            return scaled / (scaled**2 + 0.25) ** 0.5 * (x + eps * c_out) + 0.25 / (scaled**2 + 0.25) * x

    lcm = LCMReference(None, distilled, quantize=None)
    t = torch.linspace(float(lcm.sigma_to_t(lcm.sigma_max)), float(lcm.sigma_to_t(lcm.sigma_min)), STEPS)
    sigmas = ks.append_zero(lcm.t_to_sigma(t))
    gens = generators()
    x, source = first_draw(gens) * sigmas[0], GeneratorNoise(gens, (4, 8, 8))
    with torch.no_grad():
        for i in range(STEPS):
            both = lcm(torch.cat([x, x]), sigmas[i].expand(4), torch.cat([rig.cond, rig.uncond]))
            cond_d, uncond_d = both.chunk(2)
            x = uncond_d + (cond_d - uncond_d) * CFG_SCALE
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * source()
    assert psnr(rig.mine("LCM", "Automatic"), x) > THRESHOLD_DB


def _restart_reference(rig: Rig, steps: int) -> torch.Tensor:
    """A1111 modules/sd_samplers_extra.restart_sampler, transcribed over k-diffusion's helpers."""
    ks = REFERENCE.sampling
    sigmas = rig.reference_sigmas("karras", steps)
    gens = generators()
    x, source = first_draw(gens) * sigmas[0], GeneratorNoise(gens, (4, 8, 8))
    model, s_in = rig.reference_cfg(), x.new_ones([x.shape[0]])
    restart: dict[Any, list[int]] = {}
    if steps >= 20:
        restart_steps, times = (9, 1) if steps < 36 else (steps // 4, 2)
        sigmas = ks.get_sigmas_karras(steps - restart_steps * times, sigmas[-2].item(), sigmas[0].item())
        restart = {0.1: [restart_steps + 1, times, 2]}
    restart = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart:
            n, times, top = restart[i + 1]
            low, high = i + 1, int(torch.argmin(abs(sigmas - top), dim=0))
            if high < low:
                segment = ks.get_sigmas_karras(n, sigmas[low].item(), sigmas[high].item())[:-1]
                for _ in range(times):
                    pairs.extend(zip(segment[:-1], segment[1:], strict=True))
    last = None
    with torch.no_grad():
        for old, new in pairs:
            if last is None:
                last = old
            elif last < old:
                x = x + source() * (old**2 - last**2) ** 0.5
            d = ks.to_d(x, old, model(x, old * s_in))
            if new == 0:
                x = x + d * (new - old)
            else:
                x_2 = x + d * (new - old)
                x = x + (d + ks.to_d(x_2, new, model(x_2, new * s_in))) / 2 * (new - old)
            last = new
    return x


@needs_reference
@pytest.mark.parametrize("steps", [6, 20])
def test_restart_matches_a1111(rig: Rig, steps: int) -> None:
    assert psnr(rig.mine("Restart", "Automatic", steps), _restart_reference(rig, steps)) > THRESHOLD_DB


# --- model variants: v-prediction, SDXL added conditioning, 9-channel inpaint --------------------------------------


@needs_reference
def test_v_prediction_uses_the_v_scalings(tiny: Any) -> None:
    rig = make_rig(tiny.components("sd2_v")["unet"], "v_prediction")
    assert psnr(rig.mine("Euler", "Karras"), rig.k_reference("Euler", "Karras")) > THRESHOLD_DB


@needs_reference
def test_sdxl_added_conditioning_goes_through(tiny: Any) -> None:
    unet = tiny.components("sdxl")["unet"]
    rig = make_rig(unet, cross=unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(5)
    added_c = {
        "text_embeds": torch.randn(2, 128, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
    }
    added_u = {"text_embeds": torch.randn(2, 128, generator=g), "time_ids": added_c["time_ids"]}
    conditioning = Conditioning(rig.cond, rig.uncond, added_c, added_u)
    mine = rig.mine("Euler", "Karras", conditioning=conditioning)
    ks = REFERENCE.sampling
    sigmas = rig.reference_sigmas("karras", STEPS)
    model = ReferenceCFG(
        rig.reference,
        {"c_crossattn": rig.cond, "added": added_c},
        {"c_crossattn": rig.uncond, "added": added_u},
        CFG_SCALE,
    )
    with torch.no_grad():
        reference = ks.sample_euler(model, first_draw(generators()) * sigmas[0], sigmas, disable=True)
    assert psnr(mine, reference) > THRESHOLD_DB
    without = rig.mine("Euler", "Karras", conditioning=Conditioning(rig.cond, rig.uncond, added_u, added_u))
    assert psnr(without, reference) < THRESHOLD_DB  # the pooled embedding really reaches the UNet


@needs_reference
def test_inpaint_unet_gets_mask_and_masked_image_channels(tiny: Any) -> None:
    rig = make_rig(tiny.components("sd1_inpaint")["unet"])
    image_cond = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(9))
    mine = rig.mine("DPM++ 2M", "Karras", image_conditioning=image_cond)
    ks = REFERENCE.sampling
    sigmas = rig.reference_sigmas("karras", STEPS)
    model = ReferenceCFG(
        rig.reference,
        {"c_crossattn": rig.cond, "c_concat": image_cond},
        {"c_crossattn": rig.uncond, "c_concat": image_cond},
        CFG_SCALE,
    )
    with torch.no_grad():
        reference = ks.sample_dpmpp_2m(model, first_draw(generators()) * sigmas[0], sigmas, disable=True)
    assert psnr(mine, reference) > THRESHOLD_DB


# --- hooks ------------------------------------------------------------------------------------------------------


def test_controlnet_residuals_reach_the_unet_through_a_model_call_wrapper(rig: Rig) -> None:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(rig.unet, conditioning_embedding_out_channels=(16, 32, 96, 256)).eval()
    hint = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    seen: list[ModelInputs] = []

    def control(call: Callable[[ModelInputs], torch.Tensor], inputs: ModelInputs) -> torch.Tensor:
        with torch.no_grad():
            down, mid = controlnet(
                inputs.sample,
                inputs.timestep,
                encoder_hidden_states=inputs.encoder_hidden_states,
                controlnet_cond=hint,
                return_dict=False,
            )
        seen.append(inputs)
        return call(with_residuals(inputs, down, mid))

    plain = rig.mine("Euler", "Karras")
    zero_init = rig.mine("Euler", "Karras", hooks=SamplingHooks(model_call=[control]))
    assert len(seen) == STEPS and seen[0].sample.shape == (4, 4, 8, 8)
    assert psnr(zero_init, plain) > 100  # a fresh ControlNet's zero convolutions add nothing
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    assert psnr(rig.mine("Euler", "Karras", hooks=SamplingHooks(model_call=[control])), plain) < THRESHOLD_DB


def test_guidance_combiner_is_replaceable(rig: Rig) -> None:
    calls: list[float] = []

    def cond_only(cond: torch.Tensor, uncond: torch.Tensor, scale: float, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(scale)
        return cond

    combined = rig.mine("Euler", "Karras", hooks=SamplingHooks(guidance=cond_only))
    unguided = rig.mine("Euler", "Karras", conditioning=Conditioning(rig.cond))
    assert calls == [CFG_SCALE] * STEPS
    assert psnr(combined, unguided) > 90  # batch 4 vs batch 2 through the UNet: last-bit differences only


def test_before_and_after_step_hooks_and_stopping(rig: Rig) -> None:
    seen: list[tuple[int, int, float]] = []

    def before(state: SamplingState) -> None:
        state.conditioning = Conditioning(rig.uncond, rig.uncond)  # may swap the prompt before the first call

    def after(state: SamplingState) -> None:
        seen.append((state.step, state.total_steps, state.sigma))
        state.stop = state.step == 2

    result = rig.mine("Heun", "Karras", hooks=SamplingHooks(before_sampling=[before], after_step=[after]))
    assert [s[0] for s in seen] == [0, 1, 2] and {s[1] for s in seen} == {STEPS}
    assert seen[0][2] == pytest.approx(14.6146, rel=1e-4)
    # interrupted: the result is the last step's prediction (A1111 returns its last latent)
    states: list[torch.Tensor] = []
    rig.mine(
        "Heun",
        "Karras",
        hooks=SamplingHooks(before_sampling=[before], after_step=[lambda s: states.append(s.denoised)]),
    )
    torch.testing.assert_close(result, states[2])


def test_conditioning_changes_per_model_call(rig: Rig) -> None:
    used: list[torch.Tensor] = []

    def record(call: Callable[[ModelInputs], torch.Tensor], inputs: ModelInputs) -> torch.Tensor:
        used.append(inputs.encoder_hidden_states[0])
        return call(inputs)

    other = Conditioning(rig.uncond, rig.cond)
    schedule = lambda call: rig.conditioning() if call < 3 else other  # noqa: E731 - a prompt-editing schedule
    rig.mine("Heun", "Karras", conditioning=schedule, hooks=SamplingHooks(model_call=[record]))
    assert len(used) == 2 * STEPS - 1  # Heun: two calls a step, Euler on the last
    assert all(torch.equal(u, rig.cond[0]) for u in used[:3]) and all(torch.equal(u, rig.uncond[0]) for u in used[3:])


def test_inpaint_blending_after_guidance_keeps_the_unmasked_latents(rig: Rig) -> None:
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1  # left half stays the original picture

    def blend(denoised: torch.Tensor, state: SamplingState) -> torch.Tensor:
        return init * keep + denoised * (1 - keep)

    out = rig.mine("Euler", "Karras", hooks=SamplingHooks(after_guidance=[blend]))
    torch.testing.assert_close(out[..., :4], init[..., :4], atol=1e-5, rtol=0)
    assert psnr(out[..., 4:], init[..., 4:]) < 40


def test_brownian_noise_is_batch_independent(rig: Rig) -> None:
    batch = rig.mine("DPM++ 2M SDE", "Automatic")
    gens = generators(SEEDS[1:])
    alone = sample(
        rig.denoiser,
        "DPM++ 2M SDE",
        "Automatic",
        STEPS,
        first_draw(gens),
        Conditioning(rig.cond[1:], rig.uncond[1:]),
        CFG_SCALE,
        GeneratorNoise(gens, (4, 8, 8)),
        brownian_seeds=SEEDS[1:],
    )
    assert psnr(alone[0], batch[1]) > 90


def test_lcm_leaves_the_shared_denoiser_alone(rig: Rig) -> None:
    before = copy.deepcopy(rig.denoiser.sigmas.sigmas)
    rig.mine("LCM", "Karras")
    torch.testing.assert_close(rig.denoiser.sigmas.sigmas, before)
    assert not rig.denoiser.lcm


@pytest.mark.parametrize("sampler", [s.label for s in SAMPLERS])
def test_every_sampler_runs_img2img_at_low_strength(rig: Rig, sampler: str) -> None:
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    total, start = img2img_start(4, 0.3)  # t_enc 1: two steps (or one, or none, for the timestep samplers)
    out = rig.mine(sampler, "Automatic", total, init_latents=init, start_at_step=start)
    assert out.shape == init.shape and bool(torch.isfinite(out).all())
