"""Every A1111 schedule type: shape, ends, known values, names; the model's training sigmas from its config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.errors import EaselError
from pipelines.sampling import schedules
from pipelines.sampling.schedules import AYS_SD1, AYS_SDXL, SCHEDULES, ModelSigmas, compute_sigmas, resolve

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "models" / "configs"


@pytest.fixture(scope="module")
def sd1() -> ModelSigmas:
    return ModelSigmas.from_scheduler_config(json.loads((CONFIGS / "sd1/scheduler/scheduler_config.json").read_text()))


@pytest.fixture(scope="module")
def sdxl() -> ModelSigmas:
    config = json.loads((CONFIGS / "sdxl/scheduler/scheduler_config.json").read_text())
    return ModelSigmas.from_scheduler_config(config, is_sdxl=True)


def test_training_sigmas_match_the_ldm_formula(sd1: ModelSigmas) -> None:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas).astype(np.float32)
    expected = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    assert len(sd1) == 1000
    np.testing.assert_allclose(sd1.sigmas.numpy(), expected, rtol=1e-6)
    assert sd1.sigma_min == pytest.approx(0.0291675, rel=1e-5)  # float32 alpha-bar, as LDM stores it
    assert sd1.sigma_max == pytest.approx(14.614641, rel=1e-6)


def test_other_betas_and_zero_terminal_snr_are_read_from_the_config() -> None:
    linear = ModelSigmas.from_scheduler_config({"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"})
    assert linear.sigma_max == pytest.approx(156.6, rel=1e-2)  # DDPM's linear betas reach far higher noise
    zero = ModelSigmas.from_scheduler_config(
        {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True}
    )
    assert zero.alphas_cumprod[-1] == pytest.approx(schedules.ZERO_SNR_LAST_ALPHA_CUMPROD, rel=1e-5)
    assert zero.sigma_max > 4000  # finite, but pure noise in practice
    assert torch.isfinite(compute_sigmas("karras", 10, zero)).all()


def test_sigma_to_t_round_trips_and_hits_training_steps(sd1: ModelSigmas) -> None:
    t = torch.tensor([0.0, 1.0, 250.5, 998.25, 999.0])
    np.testing.assert_allclose(sd1.sigma_to_t(sd1.t_to_sigma(t)).numpy(), t.numpy(), atol=2e-3)
    assert sd1.sigma_to_t(sd1.sigmas[[0, 17, 999]]).tolist() == pytest.approx([0.0, 17.0, 999.0], abs=1e-4)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s.function is not None], ids=lambda s: s.name)
@pytest.mark.parametrize("n", [1, 4, 10, 25])
def test_every_schedule_gives_n_plus_one_decreasing_sigmas_ending_in_zero(
    schedule: schedules.Schedule, n: int, sd1: ModelSigmas
) -> None:
    sigmas = compute_sigmas(schedule, n, sd1)
    assert sigmas.dtype == torch.float32
    assert len(sigmas) == n + 1  # ddim too: 4, 10 and 25 divide 1000
    assert sigmas[-1] == 0
    assert bool((sigmas[:-1] > 0).all())
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas


# Which schedules start at the model's sigma_max / end (before the 0) at its sigma_min.
STARTS_AT_MAX = {"uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal", "simple"}
STARTS_AT_MAX |= {"normal", "beta"}
ENDS_AT_MIN = {"uniform", "karras", "exponential", "polyexponential", "kl_optimal", "normal", "beta"}


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s.function is not None], ids=lambda s: s.name)
def test_ends_of_each_schedule(schedule: schedules.Schedule, sd1: ModelSigmas) -> None:
    sigmas = compute_sigmas(schedule, 10, sd1)
    if schedule.name in STARTS_AT_MAX:
        assert float(sigmas[0]) == pytest.approx(sd1.sigma_max, rel=1e-5)
    if schedule.name in ENDS_AT_MIN:
        assert float(sigmas[-2]) == pytest.approx(sd1.sigma_min, rel=1e-4)


def test_karras_four_steps_by_hand(sd1: ModelSigmas) -> None:
    # sigma_max^(1/7) = 1.46689, sigma_min^(1/7) = 0.60353; thirds of the way between them, to the 7th power
    expected = [14.614641, 3.168603, 0.446918, 0.029167, 0.0]
    assert compute_sigmas("Karras", 4, sd1).tolist() == pytest.approx(expected, rel=2e-5)
    # rho 1 (A1111's "rho" setting) is linear in sigma
    linear = compute_sigmas("karras", 4, sd1, rho=1.0).tolist()
    assert linear[1] == pytest.approx(sd1.sigma_max - (sd1.sigma_max - sd1.sigma_min) / 3, rel=1e-5)


def test_exponential_and_polyexponential_rho_1_agree(sd1: ModelSigmas) -> None:
    exp = compute_sigmas("exponential", 7, sd1)
    torch.testing.assert_close(compute_sigmas("polyexponential", 7, sd1), exp, rtol=1e-5, atol=0)
    ratios = exp[1:-1] / exp[:-2]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])), rtol=1e-4, atol=0)


def test_align_your_steps_uses_the_tables_verbatim_at_eleven_and_resamples_otherwise(
    sd1: ModelSigmas, sdxl: ModelSigmas
) -> None:
    # A1111 treats the 11-value "10-step" table as 11 steps (the last one to 0): verbatim there.
    assert compute_sigmas("align_your_steps", 11, sd1).tolist() == pytest.approx([*AYS_SD1, 0.0], rel=1e-6)
    assert compute_sigmas("Align Your Steps", 11, sdxl).tolist() == pytest.approx([*AYS_SDXL, 0.0], rel=1e-6)
    ten = compute_sigmas("align_your_steps", 10, sd1)
    assert float(ten[0]) == pytest.approx(14.615) and float(ten[-2]) == pytest.approx(0.029, rel=1e-5)
    # log-linear resampling of the table at 10 points: the 11 knots at i/10 in log space, read at j/9
    knots = np.log(np.asarray(AYS_SD1))
    expected = np.exp(np.interp(np.linspace(0, 1, 10), np.linspace(0, 1, 11), knots))
    np.testing.assert_allclose(ten[:-1].numpy(), expected, rtol=1e-5)


def test_simple_ddim_sgm_and_normal_pick_training_steps(sd1: ModelSigmas) -> None:
    assert compute_sigmas("simple", 4, sd1)[:-1].tolist() == pytest.approx(sd1.sigmas[[999, 749, 499, 249]].tolist())
    assert compute_sigmas("ddim", 4, sd1)[:-1].tolist() == pytest.approx(sd1.sigmas[[751, 501, 251, 1]].tolist())
    sgm = compute_sigmas("sgm_uniform", 4, sd1)
    assert sd1.sigma_to_t(sgm[:-1]).tolist() == pytest.approx([999, 749.25, 499.5, 249.75], abs=1e-2)
    normal = compute_sigmas("normal", 4, sd1)
    assert sd1.sigma_to_t(normal[:-1]).tolist() == pytest.approx([999, 666, 333, 0], abs=1e-2)
    # A1111's ddim schedule takes every 1000 // n-th sigma, so n that do not divide 1000 give extra steps
    assert len(compute_sigmas("ddim", 7, sd1)) - 1 == 8


def test_beta_and_kl_optimal(sd1: ModelSigmas) -> None:
    from scipy import stats

    beta = compute_sigmas("beta", 5, sd1)
    ppf = [stats.beta.ppf(q, 0.6, 0.6) for q in (1.0, 0.75, 0.5, 0.25, 0.0)]
    expected = [sd1.sigma_min + p * (sd1.sigma_max - sd1.sigma_min) for p in ppf]
    assert beta[:-1].tolist() == pytest.approx(expected, rel=1e-5)
    kl = compute_sigmas("kl_optimal", 5, sd1)
    angles = np.arctan(kl[:-1].double().numpy())
    np.testing.assert_allclose(np.diff(angles), np.full(4, np.diff(angles)[0]), rtol=1e-4)


def test_names_labels_and_aliases_resolve_case_insensitively() -> None:
    assert resolve("SGMUniform").label == "SGM Uniform"
    assert resolve("sgm_uniform") is resolve("SGM Uniform") is resolve("sgm uniform")
    for schedule in SCHEDULES:
        assert resolve(schedule.name) is schedule
        assert resolve(schedule.label.upper()) is schedule
    assert [s.name for s in SCHEDULES] == [
        "automatic",
        "uniform",
        "karras",
        "exponential",
        "polyexponential",
        "sgm_uniform",
        "kl_optimal",
        "align_your_steps",
        "simple",
        "normal",
        "ddim",
        "beta",
    ]
    assert resolve("karras").default_rho == 7.0 and resolve("polyexponential").default_rho == 1.0
    assert resolve("uniform").need_inner_model and not resolve("karras").need_inner_model
    assert resolve("sgm_uniform").api_entry()["aliases"] == ["SGMUniform"]


def test_unknown_schedule_is_a_clear_user_error() -> None:
    with pytest.raises(EaselError, match="Unknown schedule type 'Karas'.*Karras"):
        resolve("Karas")


def test_automatic_must_be_resolved_by_the_sampler(sd1: ModelSigmas) -> None:
    with pytest.raises(ValueError, match="resolved per sampler"):
        compute_sigmas("Automatic", 10, sd1)


def test_lcm_sigmas_are_the_fifty_distilled_steps(sd1: ModelSigmas) -> None:
    lcm = sd1.lcm()
    assert len(lcm) == 50
    torch.testing.assert_close(lcm.sigmas, sd1.sigmas[19::20])
    assert lcm.timestep(lcm.sigmas[[0, 49]]).tolist() == [19.0, 999.0]
