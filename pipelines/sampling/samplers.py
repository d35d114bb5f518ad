"""A1111 sampler and schedule names -> a fresh diffusers scheduler.

Users (and infotexts from A1111/Forge) speak in A1111 names: "DPM++ 2M" with schedule type "Karras", or the
old combined "DPM++ 2M Karras". Diffusers speaks in scheduler classes and config flags. This module is the
one place that translates, so the UI, the API and the infotext reader agree on the names.

Schedule types, and how each maps (A1111 computes sigmas itself; diffusers gets there by config flags):

- Automatic: no schedule override at all. The model's own scheduler config (its `timestep_spacing`,
  `steps_offset`, any sigma flags it sets) on top of the scheduler class's defaults. Simple and predictable:
  it is what the checkpoint's authors shipped. A1111's "Automatic" instead picks a per-sampler favourite
  (Karras for DPM++ 2M / DPM++ SDE, Exponential for DPM++ 2M/3M SDE); choose those explicitly to match it.
- Uniform: `timestep_spacing="linspace"`. A1111's uniform is k-diffusion's `get_sigmas(n)`: timesteps
  evenly spaced from the last training step down to 0, which is exactly diffusers' linspace spacing.
- Karras / Exponential / Beta: `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
- SGM Uniform / Simple: `timestep_spacing="trailing"`. Both start at the last training step and step down
  evenly without reaching 0 (sgm_uniform in t, simple by striding the sigma table): diffusers' trailing.

An explicit schedule clears the other sigma flags, so a model config that enables one cannot leak into it.
A sampler whose diffusers class cannot express a schedule raises EaselError rather than silently ignoring
it. LCM keeps its own timestep schedule (evenly strided down from the last step, i.e. trailing-like), so it
accepts Automatic, SGM Uniform and Simple only.

Samplers follow A1111's settings where diffusers can: DPM++ multistep solvers take a first-order last step
down to sigma 0 (as k-diffusion does), DDIM/PLMS/LCM never clip latents. UniPC uses bh2, order 2 (A1111's
bh1 divides by zero on diffusers' final step to sigma 0). DPM-Solver multistep and UniPC get a one-method
fix for runs whose first two timesteps coincide (see `_RunStartsAtFirstTimestep`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import EaselError

SAMPLERS: tuple[str, ...] = (
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)

SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "Beta")

_SIGMA_FLAGS: dict[str, str] = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}
_SPACINGS: dict[str, str] = {"Uniform": "linspace", "SGM Uniform": "trailing", "Simple": "trailing"}
_NATIVE_TRAILING = ("Automatic", "SGM Uniform", "Simple")

# DPM-Solver settings that match k-diffusion's DPM++ samplers: first-order last step, ending at sigma 0.
_DPM_MULTISTEP = {"lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero"}


@dataclass(frozen=True)
class _SamplerSpec:
    """How one A1111 sampler is built: diffusers class name (resolved lazily, so importing this is cheap)."""

    class_name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Filled in only when the model's config is silent: diffusers' class defaults are wrong for latents there.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    native_trailing_schedule: bool = False


_SPECS: dict[str, _SamplerSpec] = {
    "DPM++ 2M": _SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", **_DPM_MULTISTEP},
        aliases=("k_dpmpp_2m", "dpmpp_2m"),
    ),
    "DPM++ SDE": _SamplerSpec("DPMSolverSDEScheduler", aliases=("k_dpmpp_sde", "dpmpp_sde")),
    "DPM++ 2M SDE": _SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint", **_DPM_MULTISTEP},
        aliases=("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
    ),
    "DPM++ 2M SDE Heun": _SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun", **_DPM_MULTISTEP},
        aliases=("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"),
    ),
    "DPM++ 3M SDE": _SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint", **_DPM_MULTISTEP},
        aliases=("k_dpmpp_3m_sde", "dpmpp_3m_sde"),
    ),
    "Euler a": _SamplerSpec(
        "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral", "euler_ancestral", "euler_a")
    ),
    "Euler": _SamplerSpec("EulerDiscreteScheduler", aliases=("k_euler", "euler")),
    "LMS": _SamplerSpec("LMSDiscreteScheduler", aliases=("k_lms", "lms")),
    "Heun": _SamplerSpec("HeunDiscreteScheduler", aliases=("k_heun", "heun")),
    "DPM2": _SamplerSpec("KDPM2DiscreteScheduler", aliases=("k_dpm_2", "dpm_2")),
    "DPM2 a": _SamplerSpec(
        "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a", "k_dpm_2_ancestral", "dpm_2_ancestral", "dpm2_a")
    ),
    # A1111's DDIM uses alphas_cumprod[0] as the final alpha and never clips latents.
    "DDIM": _SamplerSpec(
        "DDIMScheduler", defaults={"clip_sample": False, "set_alpha_to_one": False}, aliases=("ddim",)
    ),
    "PLMS": _SamplerSpec(
        "PNDMScheduler", {"skip_prk_steps": True}, defaults={"set_alpha_to_one": False}, aliases=("plms", "pndm")
    ),
    # bh2, order 2: diffusers' choice for guided sampling. A1111's bh1 divides by zero on the last step to sigma 0.
    "UniPC": _SamplerSpec(
        "UniPCMultistepScheduler",
        {"solver_type": "bh2", "solver_order": 2, "lower_order_final": True},
        aliases=("unipc", "uni_pc"),
    ),
    "LCM": _SamplerSpec(
        "LCMScheduler",
        defaults={"clip_sample": False, "set_alpha_to_one": False},
        aliases=("k_lcm", "lcm"),
        native_trailing_schedule=True,
    ),
}


def _normalize(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


def _build_name_table() -> dict[str, tuple[str, str | None]]:
    """Every accepted spelling -> (canonical sampler, schedule named by the spelling itself, if any)."""
    table: dict[str, tuple[str, str | None]] = {}
    for canonical, spec in _SPECS.items():
        table[_normalize(canonical)] = (canonical, None)
        for alias in spec.aliases:
            table[alias] = (canonical, None)
            if alias.startswith("k_"):
                table[f"{alias}_ka"] = (canonical, "Karras")  # A1111's old API aliases for "... Karras"
    return table


_NAMES = _build_name_table()


def canonical_schedule_type(name: str) -> str:
    """'karras', 'sgm_uniform', 'SGM uniform' -> the canonical label; the API and old configs use snake case."""
    key = _normalize(name.replace("_", " ").replace("-", " "))
    for label in SCHEDULE_TYPES:
        if label.casefold() == key:
            return label
    raise EaselError(f"Unknown schedule type {name!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}.")


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); old infotexts and API clients still send combined names."""
    key = _normalize(name)
    if key in _NAMES:
        return _NAMES[key]
    for label in SCHEDULE_TYPES:
        suffix = " " + label.casefold()
        if key.endswith(suffix):
            found = _NAMES.get(key[: -len(suffix)])
            if found is not None and found[1] is None:
                return found[0], label
    raise EaselError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLERS)}.")


def _init_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


def _schedule_overrides(sampler: str, schedule: str, parameters: frozenset[str]) -> dict[str, Any]:
    """Config overrides for one schedule type, or EaselError when this scheduler class cannot follow it."""
    spec = _SPECS[sampler]
    if schedule == "Automatic":
        return {}
    if spec.native_trailing_schedule:
        if schedule in _NATIVE_TRAILING:
            return {}
        raise EaselError(
            f"The {sampler} sampler uses its own timestep schedule; choose schedule type "
            f"{', '.join(_NATIVE_TRAILING)} instead of {schedule}."
        )
    needed = _SIGMA_FLAGS.get(schedule, "timestep_spacing")
    if needed not in parameters:
        possible = [
            s for s in SCHEDULE_TYPES if s == "Automatic" or _SIGMA_FLAGS.get(s, "timestep_spacing") in parameters
        ]
        raise EaselError(
            f"The {sampler} sampler cannot use the {schedule} schedule. "
            f"Schedule types that work with it: {', '.join(possible)}."
        )
    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS.values() if flag in parameters}
    if schedule in _SIGMA_FLAGS:
        overrides[_SIGMA_FLAGS[schedule]] = True
    else:
        overrides["timestep_spacing"] = _SPACINGS[schedule]
    return overrides


def supported_schedule_types(sampler: str) -> tuple[str, ...]:
    """The schedule types `build_scheduler` accepts for this sampler: what a UI dropdown should offer."""
    canonical, embedded = split_sampler_name(sampler)
    parameters = _init_parameters(_scheduler_class(canonical))
    possible = []
    for schedule in SCHEDULE_TYPES if embedded is None else (embedded,):
        try:
            _schedule_overrides(canonical, schedule, parameters)
        except EaselError:
            continue
        possible.append(schedule)
    return tuple(possible)


class _RunStartsAtFirstTimestep:
    """Fix for diffusers' multistep solvers, whose timesteps are integers.

    Karras/Exponential/Beta sigmas crowd near the top of the schedule, so the first two sigmas can round to
    the same timestep (Beta at 40 steps; Karras at 25 on zero-terminal-SNR models). Diffusers then starts a
    txt2img run at the *second* occurrence (its img2img guess) and runs off the end with an IndexError.
    A run whose first timestep is the schedule's first starts at step 0; img2img/inpaint pipelines set
    `begin_index` and never get here.
    """

    timesteps: Any

    def index_for_timestep(self, timestep: Any, schedule_timesteps: Any = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if len(schedule) > 1 and bool(schedule[0] == schedule[1]) and bool(schedule[0] == timestep):
            return 0
        return super().index_for_timestep(timestep, schedule_timesteps)  # type: ignore[misc]


_NEEDS_FIRST_STEP_FIX = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


@functools.cache
def _diffusers_class(name: str) -> type:
    """One class per diffusers name (cached, so isinstance and type checks stay stable across requests)."""
    import diffusers  # deferred: importing diffusers costs seconds, and infotext parsing needs only the names

    base = getattr(diffusers, name)
    if name not in _NEEDS_FIRST_STEP_FIX:
        return base
    # Same class name, so the scheduler's saved config still reads as the stock diffusers class.
    return type(name, (_RunStartsAtFirstTimestep, base), {"__module__": __name__, "__doc__": base.__doc__})


def __getattr__(name: str) -> type:
    """Expose the fixed classes by name, so pickle can find them, without importing diffusers up front."""
    if name in _NEEDS_FIRST_STEP_FIX:
        return _diffusers_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scheduler_class(sampler: str) -> type:
    return _diffusers_class(_SPECS[sampler].class_name)


def build_scheduler(
    base_config: Mapping[str, Any],
    sampler: str,
    schedule_type: str = "Automatic",
    *,
    noise_seed: int | None = None,
) -> Any:
    """A new scheduler for one request: schedulers hold per-run state, so one is never shared.

    `base_config` is the model's scheduler config (its betas and prediction type are kept). `sampler` may be
    a combined old name ("DPM++ 2M Karras"); then `schedule_type` must be Automatic or the same schedule.
    `noise_seed` seeds DPM++ SDE's Brownian noise, which otherwise comes from torch's global RNG and would
    make the same seed give different images.
    """
    canonical, embedded = split_sampler_name(sampler)
    schedule = canonical_schedule_type(schedule_type)
    if embedded is not None:
        if schedule not in ("Automatic", embedded):
            raise EaselError(
                f"Sampler {sampler!r} already names the {embedded} schedule, which conflicts with "
                f"schedule type {schedule}. Pick the sampler {canonical!r} and one schedule type."
            )
        schedule = embedded
    spec = _SPECS[canonical]
    cls = _scheduler_class(canonical)
    parameters = _init_parameters(cls)

    # Keep only what this class understands, so diffusers does not log about keys of the model's own class.
    config = {key: value for key, value in dict(base_config).items() if key in parameters}
    for key, value in spec.defaults.items():
        config.setdefault(key, value)
    config.update(spec.overrides)
    config.update(_schedule_overrides(canonical, schedule, parameters))
    if noise_seed is not None and "noise_sampler_seed" in parameters:
        config["noise_sampler_seed"] = noise_seed
    return copy.deepcopy(_prototype(cls, json.dumps(config, sort_keys=True, default=str)))


@functools.lru_cache(maxsize=256)
def _prototype(cls: type, config_json: str) -> Any:
    """A never-used scheduler per (class, config). Some constructors are slow (KDPM2's runs a 1000-step Python
    loop, ~0.5 s); a deep copy of a fresh one is ~1 ms and has the same state as a new object."""
    return cls.from_config(json.loads(config_json))
