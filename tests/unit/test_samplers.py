"""Samplers: every A1111 name builds a fresh, working diffusers scheduler, or refuses with an EaselError."""

from __future__ import annotations

import inspect
import json
import pickle

import numpy as np
import pytest
import scipy.stats
import torch
from diffusers.configuration_utils import FrozenDict

from pipelines.errors import EaselError
from pipelines.sampling.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    build_scheduler,
    canonical_schedule_type,
    split_sampler_name,
    supported_schedule_types,
)

SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "trained_betas": None,
}
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "trained_betas": None,
}
V_PREDICTION_CONFIG = {  # SD 2.x 768-v
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "v_prediction",
}
ZERO_SNR_CONFIG = {  # v-prediction with zero terminal SNR, as some SDXL fine-tunes ship
    **V_PREDICTION_CONFIG,
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}
CONFIGS = {"sd15": SD15_CONFIG, "sdxl": SDXL_CONFIG, "v": V_PREDICTION_CONFIG, "zero-snr": ZERO_SNR_CONFIG}

# What each sampler refuses, written out by hand (the product's promise, not read back from samplers.py):
# schedulers without a sigma table (DDIM, PLMS) and Euler a cannot take sigma schedules; LCM keeps its own
# trailing-like timesteps. Every other sampler takes all seven schedule types.
SIGMA_SCHEDULES = ("Karras", "Exponential", "Beta")
REFUSED: dict[str, tuple[str, ...]] = {
    "Euler a": SIGMA_SCHEDULES,
    "DDIM": SIGMA_SCHEDULES,
    "PLMS": SIGMA_SCHEDULES,
    "LCM": ("Uniform", *SIGMA_SCHEDULES),
}


def _accepted(sampler: str) -> tuple[str, ...]:
    return tuple(s for s in SCHEDULE_TYPES if s not in REFUSED.get(sampler, ()))


def _distinct(values: object) -> np.ndarray:
    """Consecutive repeats dropped: second-order samplers (Heun, DPM2, DPM++ SDE) and PLMS list steps twice."""
    array = np.asarray(values, dtype=np.float64)
    keep = np.ones(len(array), dtype=bool)
    keep[1:] = ~np.isclose(array[1:], array[:-1], rtol=1e-6, atol=0.0)
    return array[keep]


def _denoising_sigmas(scheduler: object) -> np.ndarray:
    """The sigma of each of the run's steps, without the final zero(s)."""
    sigmas = _distinct(scheduler.sigmas)  # type: ignore[attr-defined]
    return sigmas[sigmas > 0]


def _denoising_timesteps(scheduler: object) -> np.ndarray:
    """The training timestep of each step; for sigma samplers read from the sigmas (DPM2 lists midpoints too)."""
    if getattr(scheduler, "sigmas", None) is None:
        return _distinct(scheduler.timesteps)  # type: ignore[attr-defined]
    alphas = scheduler.alphas_cumprod.double().numpy()  # type: ignore[attr-defined]
    log_table = np.log(((1 - alphas) / alphas) ** 0.5)
    return np.interp(np.log(_denoising_sigmas(scheduler)), log_table, np.arange(len(log_table)))


def _assert_evenly_spaced(values: np.ndarray, what: str, atol: float = 1e-9, rtol: float = 1e-3) -> float:
    steps = np.diff(values)
    assert (steps < 0).all(), f"{what} must decrease: {values}"
    assert np.allclose(steps, steps.mean(), rtol=rtol, atol=atol), f"{what} are not evenly spaced: {values}"
    return float(-steps.mean())


def _assert_follows(scheduler: object, schedule: str, config: dict[str, object], steps: int) -> None:
    """The sigmas/timesteps a schedule type stands for, whatever the diffusers class does to get there."""
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    if schedule in SIGMA_SCHEDULES:
        sigmas = _denoising_sigmas(scheduler)
        assert len(sigmas) == steps and (np.diff(sigmas) < 0).all(), sigmas
        if schedule == "Karras":  # Karras et al. 2022: sigma^(1/rho) linear in the step, rho = 7
            _assert_evenly_spaced(sigmas ** (1 / 7), "sigma^(1/7)")
        elif schedule == "Exponential":  # log-linear from sigma_max down to sigma_min
            _assert_evenly_spaced(np.log(sigmas), "log sigmas")
        else:  # A1111's beta schedule: sigma_min + Beta(0.6, 0.6) quantiles * (sigma_max - sigma_min)
            fraction = (sigmas - sigmas[-1]) / (sigmas[0] - sigmas[-1])
            expected = scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps), 0.6, 0.6)
            assert np.allclose(fraction, expected, atol=1e-4), (fraction, expected)
            gaps = -np.diff(sigmas)
            assert gaps[0] < gaps.max() and gaps[-1] < gaps.max(), "beta crowds both ends"
        return
    timesteps = _denoising_timesteps(scheduler)
    assert len(timesteps) == steps, timesteps
    if type(scheduler).__name__ == "LCMScheduler":  # its own schedule, whatever the (accepted) type says
        assert timesteps[0] == pytest.approx(999) and (np.diff(timesteps) < 0).all() and timesteps[-1] > 0
        return
    spacing = {"Uniform": "linspace", "SGM Uniform": "trailing", "Simple": "trailing"}.get(schedule)
    if schedule == "Automatic":  # the model's own schedule: its declared spacing, or the class default
        assert not config.get("use_karras_sigmas"), "a model config with sigma flags needs a sigma check here"
        spacing = config.get("timestep_spacing")  # type: ignore[assignment]
    step = _assert_evenly_spaced(timesteps, "timesteps", atol=1.5, rtol=0.0)
    if spacing == "linspace":  # from the last training step down to t=0 (multistep solvers stop a step short)
        multistep = type(scheduler).__name__ in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
        assert timesteps[0] == pytest.approx(999, abs=1), timesteps
        assert timesteps[-1] == pytest.approx(step if multistep else 0, abs=1.5), timesteps
    elif spacing == "trailing":  # from the last training step, never reaching t=0
        assert timesteps[0] == pytest.approx(999, abs=1), timesteps
        assert timesteps[-1] == pytest.approx(1000 / steps - 1, abs=1.5), timesteps
    elif spacing == "leading":  # from t=steps_offset up, so it stops short of the last training step
        assert timesteps[0] < 999 - step / 2 and timesteps[-1] <= step + 1.5, timesteps


def _run(scheduler: object, steps: int) -> torch.Tensor:
    """A whole denoising loop with random model outputs: shapes, indices and the last step are exercised."""
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    latents = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma  # type: ignore[attr-defined]
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters  # type: ignore[attr-defined]
    for timestep in scheduler.timesteps:  # type: ignore[attr-defined]
        scheduler.scale_model_input(latents, timestep)  # type: ignore[attr-defined]
        model_output = torch.randn(1, 4, 8, 8, generator=generator)
        extra = {"generator": generator} if takes_generator else {}
        latents = scheduler.step(model_output, timestep, latents, **extra).prev_sample  # type: ignore[attr-defined]
    return latents


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_builds_and_keeps_the_model_config(config_name: str, sampler: str) -> None:
    config = CONFIGS[config_name]
    scheduler = build_scheduler(config, sampler)
    assert scheduler.config.prediction_type == config["prediction_type"]
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == pytest.approx(0.00085)
    assert scheduler.config.beta_end == pytest.approx(0.012)
    assert scheduler.config.num_train_timesteps == 1000
    if "rescale_betas_zero_snr" in scheduler.config:
        assert scheduler.config.rescale_betas_zero_snr == config.get("rescale_betas_zero_snr", False)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_call_returns_a_new_scheduler(sampler: str) -> None:
    first = build_scheduler(SD15_CONFIG, sampler)
    second = build_scheduler(SD15_CONFIG, sampler)
    assert first is not second
    first.set_timesteps(4)
    second.set_timesteps(2)
    assert len(first.timesteps) != len(second.timesteps)


def test_accepts_a_frozen_dict_config() -> None:
    scheduler = build_scheduler(FrozenDict(SD15_CONFIG), "Euler a")
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"


@pytest.mark.parametrize(
    ("sampler", "class_name", "expected"),
    [
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("Euler", "EulerDiscreteScheduler", {}),
        ("LMS", "LMSDiscreteScheduler", {}),
        ("Heun", "HeunDiscreteScheduler", {}),
        ("DPM2", "KDPM2DiscreteScheduler", {}),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        (
            "DPM++ 2M SDE Heun",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
        ),
        ("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        ("DPM++ SDE", "DPMSolverSDEScheduler", {}),
        ("DDIM", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
        ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        ("UniPC", "UniPCMultistepScheduler", {}),
        ("LCM", "LCMScheduler", {"clip_sample": False}),
    ],
)
def test_sampler_maps_to_the_design_class(sampler: str, class_name: str, expected: dict[str, object]) -> None:
    scheduler = build_scheduler(SDXL_CONFIG, sampler)
    assert type(scheduler).__name__ == class_name
    for key, value in expected.items():
        assert scheduler.config[key] == value


def test_every_listed_sampler_has_a_mapping() -> None:
    assert SAMPLERS[:2] == ("DPM++ 2M", "DPM++ SDE")  # A1111's defaults head the dropdown
    assert len(set(SAMPLERS)) == len(SAMPLERS)
    for sampler in SAMPLERS:  # the listed name and its case/spacing variants resolve to the sampler itself
        assert split_sampler_name(sampler) == (sampler, None)
        assert split_sampler_name(f" {sampler.upper()} ") == (sampler, None)
        assert build_scheduler(SD15_CONFIG, sampler) is not None
    classes = {sampler: type(build_scheduler(SD15_CONFIG, sampler)).__name__ for sampler in SAMPLERS}
    # One diffusers class may serve several DPM++ solvers; every other sampler has a class of its own.
    singles = [name for sampler, name in classes.items() if name != "DPMSolverMultistepScheduler"]
    assert len(set(singles)) == len(singles), classes
    for schedule in SCHEDULE_TYPES:  # each label is its own canonical name, also in the API's snake case
        assert canonical_schedule_type(schedule) == schedule
        assert canonical_schedule_type(schedule.lower().replace(" ", "_")) == schedule
        assert any(schedule in _accepted(sampler) for sampler in SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_supported_schedule_types_are_what_builds(sampler: str) -> None:
    """The dropdown offers exactly the schedule types the sampler accepts (see REFUSED), in SCHEDULE_TYPES order."""
    assert supported_schedule_types(sampler) == _accepted(sampler)
    for schedule in SCHEDULE_TYPES:
        combined = f"{sampler} {schedule}"
        assert supported_schedule_types(combined) == ((schedule,) if schedule in _accepted(sampler) else ())


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("Karras", {"use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False}),
        ("Exponential", {"use_karras_sigmas": False, "use_exponential_sigmas": True, "use_beta_sigmas": False}),
        ("Beta", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": True}),
        ("Uniform", {"timestep_spacing": "linspace", "use_karras_sigmas": False}),
        ("SGM Uniform", {"timestep_spacing": "trailing", "use_karras_sigmas": False}),
        ("Simple", {"timestep_spacing": "trailing", "use_karras_sigmas": False}),
    ],
)
def test_schedule_types_set_the_matching_flags(schedule: str, expected: dict[str, object]) -> None:
    # The model's own config asks for Karras: an explicit schedule type must win over it.
    config = {**SDXL_CONFIG, "use_karras_sigmas": True}
    scheduler = build_scheduler(config, "DPM++ 2M", schedule)
    for key, value in expected.items():
        assert scheduler.config[key] == value


def test_automatic_keeps_the_model_config_schedule() -> None:
    scheduler = build_scheduler({**SDXL_CONFIG, "use_karras_sigmas": True}, "DPM++ 2M", "Automatic")
    assert scheduler.config.use_karras_sigmas is True
    scheduler = build_scheduler(SDXL_CONFIG, "Euler", "Automatic")
    assert scheduler.config.timestep_spacing == "leading"
    assert scheduler.config.use_karras_sigmas is False


def test_uniform_and_sgm_uniform_start_at_the_last_training_step() -> None:
    uniform = build_scheduler(SDXL_CONFIG, "Euler", "Uniform")
    uniform.set_timesteps(4)
    assert uniform.timesteps[0] == pytest.approx(999)
    assert uniform.sigmas[-2] < 0.1  # linspace reaches t=0 before the final zero sigma
    trailing = build_scheduler(SDXL_CONFIG, "Euler", "SGM Uniform")
    trailing.set_timesteps(4)
    assert [round(float(t)) for t in trailing.timesteps] == [999, 749, 499, 249]


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("schedule", SCHEDULE_TYPES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_combination_runs_or_refuses_clearly(config_name: str, sampler: str, schedule: str) -> None:
    config = CONFIGS[config_name]
    if schedule in REFUSED.get(sampler, ()):
        with pytest.raises(EaselError) as refused:
            build_scheduler(config, sampler, schedule, noise_seed=1)
        message = str(refused.value)
        # Names the sampler and the schedule, and lists exactly the schedule types that would work instead.
        assert f"{sampler} sampler" in message and schedule in message, message
        assert ", ".join(_accepted(sampler)) in message, message
        return
    for steps in (5, 12):
        _assert_follows(build_scheduler(config, sampler, schedule, noise_seed=1), schedule, config, steps)
    scheduler = build_scheduler(config, sampler, schedule, noise_seed=1)
    for steps in (1, 2, 4):
        latents = _run(scheduler, steps)
        assert latents.shape == (1, 4, 8, 8)
        assert torch.isfinite(latents).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_twenty_steps_run_with_the_usual_schedules(sampler: str) -> None:
    for schedule in _accepted(sampler):
        assert torch.isfinite(_run(build_scheduler(SD15_CONFIG, sampler, schedule, noise_seed=1), 20)).all()


def test_dpmpp_sde_noise_is_seeded() -> None:
    first = _run(build_scheduler(SD15_CONFIG, "DPM++ SDE", "Karras", noise_seed=5), 4)
    torch.manual_seed(123)  # the global RNG must not matter
    second = _run(build_scheduler(SD15_CONFIG, "DPM++ SDE", "Karras", noise_seed=5), 4)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Karras", ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM++ 3M SDE Exponential", ("DPM++ 3M SDE", "Exponential")),
        ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
        ("DPM2 a Karras", ("DPM2 a", "Karras")),
        ("LMS Karras", ("LMS", "Karras")),
        ("Euler a", ("Euler a", None)),
        ("euler A", ("Euler a", None)),
        ("  dpm++   2m   karras ", ("DPM++ 2M", "Karras")),
        ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("k_euler_a", ("Euler a", None)),
        ("k_dpmpp_2m", ("DPM++ 2M", None)),
        ("dpmpp_2m", ("DPM++ 2M", None)),
        ("k_dpmpp_2m_ka", ("DPM++ 2M", "Karras")),
        ("DDIM", ("DDIM", None)),
        ("uni_pc", ("UniPC", None)),
    ],
)
def test_split_sampler_name(name: str, expected: tuple[str, str | None]) -> None:
    assert split_sampler_name(name) == expected


@pytest.mark.parametrize("name", ["", "Restart", "DPM++ 2M Turbo", "Karras", "Euler a Karras Karras"])
def test_unknown_sampler_lists_valid_names(name: str) -> None:
    with pytest.raises(EaselError, match="Valid samplers: DPM\\+\\+ 2M, DPM\\+\\+ SDE"):
        split_sampler_name(name)


def test_supported_schedule_types_for_combined_names() -> None:
    assert supported_schedule_types("DPM++ 2M Karras") == ("Karras",)
    assert supported_schedule_types("Euler a Karras") == ()
    assert supported_schedule_types("DDIM") == ("Automatic", "Uniform", "SGM Uniform", "Simple")
    assert supported_schedule_types("LCM") == ("Automatic", "SGM Uniform", "Simple")
    assert supported_schedule_types("DPM++ 2M") == SCHEDULE_TYPES


def test_combined_name_builds_its_schedule_and_rejects_a_conflict() -> None:
    scheduler = build_scheduler(SD15_CONFIG, "DPM++ 2M Karras")
    assert scheduler.config.use_karras_sigmas is True
    assert build_scheduler(SD15_CONFIG, "DPM++ 2M Karras", "Karras").config.use_karras_sigmas is True
    with pytest.raises(EaselError, match="conflicts"):
        build_scheduler(SD15_CONFIG, "DPM++ 2M Karras", "Exponential")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("karras", "Karras"), ("sgm_uniform", "SGM Uniform"), ("SGM uniform", "SGM Uniform"), ("automatic", "Automatic")],
)
def test_schedule_type_names_are_forgiving(name: str, expected: str) -> None:
    assert canonical_schedule_type(name) == expected


def test_unknown_schedule_type_lists_valid_names() -> None:
    with pytest.raises(EaselError, match="Valid schedule types: Automatic, Uniform, Karras"):
        build_scheduler(SD15_CONFIG, "Euler", "Polyexponential")


def test_impossible_schedule_is_a_clear_error() -> None:
    with pytest.raises(EaselError, match="Euler a sampler cannot use the Karras schedule.*Automatic"):
        build_scheduler(SD15_CONFIG, "Euler a", "Karras")
    with pytest.raises(EaselError, match="LCM"):
        build_scheduler(SD15_CONFIG, "LCM", "Karras")


@pytest.mark.parametrize(
    ("config_name", "sampler", "schedule", "steps"),
    [
        ("sd15", "DPM++ 2M", "Beta", 40),
        ("sdxl", "UniPC", "Beta", 40),
        ("zero-snr", "DPM++ 2M", "Karras", 25),
        ("zero-snr", "DPM++ 3M SDE", "Exponential", 30),
        ("zero-snr", "UniPC", "Beta", 4),
    ],
)
def test_multistep_runs_start_at_step_zero_when_the_first_timesteps_repeat(
    config_name: str, sampler: str, schedule: str, steps: int
) -> None:
    """Diffusers would start these at the second copy of the first timestep and fail with an IndexError."""
    scheduler = build_scheduler(CONFIGS[config_name], sampler, schedule)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]  # the case being fixed
    latents = _run(scheduler, steps)
    assert torch.isfinite(latents).all()
    assert scheduler.step_index == steps


def test_fixed_multistep_classes_still_look_like_diffusers() -> None:
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    dpm = build_scheduler(SD15_CONFIG, "DPM++ 2M")
    unipc = build_scheduler(SD15_CONFIG, "UniPC")
    assert isinstance(dpm, DPMSolverMultistepScheduler) and isinstance(unipc, UniPCMultistepScheduler)
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler"
    assert json.loads(dpm.to_json_string())["_class_name"] == "DPMSolverMultistepScheduler"
    assert type(build_scheduler(SD15_CONFIG, "DPM++ 2M SDE")) is type(dpm)  # one class, not one per call
    assert type(pickle.loads(pickle.dumps(dpm))) is type(dpm)


def test_img2img_begin_index_is_still_honoured() -> None:
    scheduler = build_scheduler(SD15_CONFIG, "DPM++ 2M", "Beta")
    scheduler.set_timesteps(40)
    scheduler.set_begin_index(10)
    latents = torch.randn(1, 4, 8, 8)
    for timestep in scheduler.timesteps[10:]:
        latents = scheduler.step(torch.randn(1, 4, 8, 8), timestep, latents).prev_sample
    assert scheduler.step_index == 40
    assert torch.isfinite(latents).all()
