"""Sampler and schedule names as users, old infotexts and API clients spell them."""

from __future__ import annotations

import pytest

from pipelines.errors import EaselError
from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES, canonical_schedule_type, split_sampler_name


def test_every_a1111_sampler_and_schedule_is_listed() -> None:
    assert SAMPLERS == (
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "LCM", "DDIM",
        "DDIM CFG++", "PLMS", "UniPC",
    )  # fmt: skip
    assert SCHEDULE_TYPES == (
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
    )  # fmt: skip


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
        ("Euler a Align Your Steps", ("Euler a", "Align Your Steps")),
        ("k_euler_a", ("Euler a", None)),
        ("k_dpmpp_2m", ("DPM++ 2M", None)),
        ("dpmpp_2m", ("DPM++ 2M", None)),
        ("k_dpmpp_2m_ka", ("DPM++ 2M", "Karras")),
        ("DDIM", ("DDIM", None)),
        ("DDIM CFG++", ("DDIM CFG++", None)),
        ("uni_pc", ("UniPC", None)),
        ("Restart", ("Restart", None)),
    ],
)
def test_split_sampler_name(name: str, expected: tuple[str, str | None]) -> None:
    assert split_sampler_name(name) == expected


@pytest.mark.parametrize("name", ["", "DPM++ 2M Turbo", "Karras", "Euler a Karras Karras", "Euler Automatic"])
def test_unknown_sampler_lists_valid_names(name: str) -> None:
    with pytest.raises(EaselError, match="Valid samplers: DPM\\+\\+ 2M, DPM\\+\\+ SDE"):
        split_sampler_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("karras", "Karras"),
        ("sgm_uniform", "SGM Uniform"),
        ("SGMUniform", "SGM Uniform"),
        ("SGM uniform", "SGM Uniform"),
        ("automatic", "Automatic"),
        ("normal", "Normal"),
        ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"),
        ("ddim", "DDIM"),
        (None, "Automatic"),
    ],
)
def test_schedule_type_names_are_forgiving(name: str | None, expected: str) -> None:
    assert canonical_schedule_type(name) == expected


def test_unknown_schedule_type_lists_valid_names() -> None:
    with pytest.raises(EaselError, match="Valid schedule types: Automatic, Uniform, Karras"):
        canonical_schedule_type("Turbo")
