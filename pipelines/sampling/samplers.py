"""A1111 sampler and schedule names as users, infotexts and API clients write them -> Easel's canonical labels.

The tables themselves live with their code (``k_samplers.SAMPLERS``, ``schedules.SCHEDULES``); this module is the
one place that reads the spellings: labels in any case, A1111's API names and aliases (``k_dpmpp_2m``,
``sgm_uniform``), and the combined names of old infotexts and clients ("DPM++ 2M Karras", ``k_dpmpp_2m_ka``).
Every sampler walks every schedule, as in A1111; DDIM, PLMS and UniPC use their own timesteps and ignore it.
"""

from __future__ import annotations

import re

from pipelines.errors import EaselError
from pipelines.sampling import k_samplers, schedules

SAMPLERS: tuple[str, ...] = tuple(spec.label for spec in k_samplers.SAMPLERS)
SCHEDULE_TYPES: tuple[str, ...] = tuple(schedule.label for schedule in schedules.SCHEDULES)


def _normalize(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


def canonical_schedule_type(name: str | None) -> str:
    """'karras', 'sgm_uniform', 'SGMUniform', 'SGM uniform' -> the label; EaselError listing the labels otherwise."""
    return schedules.resolve(name or "Automatic").label


def _sampler(key: str) -> str | None:
    """A sampler label for one spelling: A1111's label or alias, or the alias without its ``k_`` / underscores."""
    for candidate in (key, f"k_{key}", key.replace("_", "")):
        try:
            return k_samplers.resolve_sampler(candidate).label
        except EaselError:
            continue
    return None


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' or 'k_dpmpp_2m_ka' -> ('DPM++ 2M', 'Karras'); 'Euler a' -> ('Euler a', None)."""
    key = _normalize(name)
    found = _sampler(key) if key else None
    if found is not None:
        return found, None
    if key.endswith("_ka") and (found := _sampler(key[: -len("_ka")])):  # A1111's old aliases for "... Karras"
        return found, "Karras"
    for label in SCHEDULE_TYPES[1:]:
        suffix = " " + label.casefold()
        if key.endswith(suffix) and (found := _sampler(key[: -len(suffix)])):
            return found, label
    raise EaselError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLERS)}.")
