"""A unit read back out of the infotext: ``ControlNet 0: "Module: canny, Model: name [hash], Weight: 1, ..."``.

sd-webui-controlnet writes each enabled unit as one A1111 infotext value (JSON-quoted by A1111, since it holds
``,`` and ``:``) made of ``Key: value`` pairs joined by ``", "``, the keys being the unit's field names in title case
(``processor_res`` -> ``Processor Res``). Its own reader splits on every comma, so a model name with a comma breaks
it; here a pair ends only where ``", "`` is followed by another title-case key and ``": "``, and an inner value
that is itself JSON-quoted is unquoted. The control image is never in the text (as in A1111): it is not restored.

The result uses sd-webui-controlnet's keys for pasted values (``ControlNet 0 module``, ``ControlNet 0 weight``...),
which A1111's ``/sdapi/v1/png-info`` returns in ``parameters``; the accordion pastes each into its widget.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import EaselError
from pipelines.extensions.context import InfotextValues
from pipelines.metadata.infotext import unquote

from . import preprocessors
from .control import ModelFile, list_models
from .units import CONTROL_MODES, HR_OPTIONS, RESIZE_ALIASES, RESIZE_MODES, _bool, _choice

UNIT_KEY = re.compile(r"^ControlNet (\d+)$")
# ", " then a title-case key (sd-webui-controlnet capitalizes each word of the field name) and ": "
_PAIR_START = re.compile(r"(?:^|, )([A-Z][A-Za-z0-9]*(?: [A-Z][A-Za-z0-9]*)*): ")
_HASHED = re.compile(r"^(.*?) \[([0-9a-fA-F]{8,10})\]$")


def split_pairs(text: str) -> dict[str, str]:
    """``"Module: canny, Model: a, b [hash], Weight: 1"`` -> ``{"Module": "canny", "Model": "a, b [hash]", ...}``."""
    text = text.strip()
    starts = list(_PAIR_START.finditer(text))
    pairs: dict[str, str] = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        pairs[match.group(1)] = unquote(text[match.end() : end].strip())
    return pairs


def field_name(display: str) -> str:
    """sd-webui-controlnet's key -> its unit field: ``Processor Res`` -> ``processor_res``."""
    return "_".join(word.lower() for word in display.split(" "))


def _number(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _choice_name(names: tuple[str, ...], aliases: Mapping[str, int]) -> Callable[[str], str]:
    def read(text: str) -> str:
        try:
            return names[_choice(text, names, aliases, "value", "unit")]
        except EaselError:
            raise ValueError(text) from None

    return read


def _flag(text: str) -> bool:
    try:
        return _bool(text, "value", "unit")
    except EaselError:
        raise ValueError(text) from None


READERS: dict[str, Callable[[str], Any]] = {
    "weight": _number,
    "resize_mode": _choice_name(RESIZE_MODES, RESIZE_ALIASES),
    "processor_res": lambda text: int(_number(text)),
    "threshold_a": _number,
    "threshold_b": _number,
    "guidance_start": _number,
    "guidance_end": _number,
    "pixel_perfect": _flag,
    "control_mode": _choice_name(CONTROL_MODES, {}),
    "hr_option": _choice_name(HR_OPTIONS, {}),
}
UNSET = -1  # sd-webui-controlnet's "the preprocessor has no such slider" (it leaves such values out)


def match_model(text: str, models: Sequence[ModelFile]) -> ModelFile | None:
    """The installed model an infotext names: by name (any case), else by its `` [hash]`` (a renamed file)."""
    name, short_hash = text.strip(), None
    hashed = _HASHED.match(name)
    if hashed:
        name, short_hash = hashed.group(1).strip(), hashed.group(2).lower()
    for model in models:
        if model.name.lower() == name.lower():
            return model
    if short_hash:
        for model in models:
            try:
                if model.short_hash == short_hash:
                    return model
            except OSError:
                continue
    return None


def read_unit(index: int, text: str, models: Sequence[ModelFile]) -> tuple[dict[str, Any], list[str]]:
    """One unit's fields (sd-webui-controlnet's names) from its infotext value, and what could not be read."""
    where = f"ControlNet {index}"
    values: dict[str, Any] = {"enabled": True}
    warnings: list[str] = []
    for key, raw in split_pairs(text).items():
        name = field_name(key)
        if name == "module":
            try:
                values["module"] = preprocessors.find(raw).name
            except EaselError:
                values["module"] = raw
                warnings.append(f"{where}: the preprocessor '{raw}' is not available here; kept its name")
        elif name == "model":
            found = match_model(raw, models) if raw.lower() != "none" else None
            if found is not None:
                values["model"] = found.name
            else:
                hashed = _HASHED.match(raw)
                values["model"] = hashed.group(1).strip() if hashed else raw
                if raw.lower() != "none":
                    warnings.append(f"{where}: the model '{raw}' is not installed; kept its name")
        elif name in READERS:
            try:
                value = READERS[name](raw)
            except ValueError:
                warnings.append(f"{where}: '{key}: {raw}' was not read")
                continue
            if name in ("processor_res", "threshold_a", "threshold_b") and value == UNSET:
                continue
            values[name] = value
    return values, warnings


def read_infotext(fields: Mapping[str, str], folders: Sequence[Path]) -> InfotextValues:
    """Every ``ControlNet N`` value of a parsed infotext as ``{"ControlNet N <field>": value}``."""
    units = sorted((int(m.group(1)), v) for k, v in fields.items() if (m := UNIT_KEY.match(k)) and isinstance(v, str))
    if not units:
        return InfotextValues()
    models = list_models(folders)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for index, text in units:
        unit, notes = read_unit(index, text, models)
        values.update({f"ControlNet {index} {name}": value for name, value in unit.items()})
        warnings.extend(notes)
    return InfotextValues(values, tuple(warnings))
