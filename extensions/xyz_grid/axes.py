"""The axes of the X/Y/Z plot, in A1111 1.10's order (clients send an axis as its index in that list), and how
their values are written ("1, 2, 3", "1-5", "1-10 (+2)", "1-10 [5]", or picked from a list of choices).

Axes Easel has no equivalent for keep their place in the list (so the indices stay A1111's) and are refused with
a message when chosen. Numeric fields that extensions register are appended after A1111's axes.
"""

from __future__ import annotations

import csv
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from io import StringIO
from typing import Any

import numpy as np

from pipelines.errors import EaselError
from pipelines.extensions.context import Catalog
from pipelines.fields import CORE, FIELDS, MAX_SEED
from pipelines.requests import GenerationRequest
from pipelines.sampling.hires import HIRES_UPSCALERS
from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES

Apply = Callable[[GenerationRequest, Any, list[Any]], GenerationRequest]

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*$")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)\s*\[(\d+)\s*\]\s*$")
_NUMBER = r"([+-]?\s*\d+(?:\.\d*)?)"
_FLOAT_RANGE = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*$")
_FLOAT_COUNT = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\[(\d+(?:\.\d*)?)\s*\]\s*$")
MAX_VALUES = 1000


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # int | float | str | size | order | nothing
    apply: Apply | None  # None: an A1111 axis Easel has no equivalent for
    modes: frozenset[str] = frozenset({"txt2img", "img2img"})
    choices: Callable[[], Sequence[str]] | None = None
    cost: float = 0.0  # the costliest axis (a checkpoint switch) runs outermost, so each model loads once

    @property
    def supported(self) -> bool:
        return self.apply is not None


def _field(name: str, convert: Callable[[Any], Any] | None = None) -> Apply:
    def apply(request: GenerationRequest, value: Any, _values: list[Any]) -> GenerationRequest:
        return replace(request, **{name: convert(value) if convert else value})

    return apply


def _choice(options: Callable[[], Sequence[str]], what: str) -> Callable[[Any], str]:
    def pick(value: Any) -> str:
        wanted = str(value).strip().lower()
        for option in options():
            if option.lower() == wanted:
                return option
        raise EaselError(f"X/Y/Z plot: unknown {what} '{value}'")

    return pick


def _prompt_sr(request: GenerationRequest, value: Any, values: list[Any]) -> GenerationRequest:
    search = str(values[0])
    if search not in request.prompt and search not in request.negative_prompt:
        raise EaselError(f"X/Y/Z plot: Prompt S/R did not find '{search}' in the prompt or the negative prompt")
    return replace(
        request,
        prompt=request.prompt.replace(search, str(value)),
        negative_prompt=request.negative_prompt.replace(search, str(value)),
        hr_prompt=request.hr_prompt.replace(search, str(value)),
        hr_negative_prompt=request.hr_negative_prompt.replace(search, str(value)),
    )


def _prompt_order(request: GenerationRequest, value: Any, _values: list[Any]) -> GenerationRequest:
    """The prompt's tokens put in this permutation's order (A1111: the tokens must all be in the prompt)."""
    tokens = list(value)
    prompt = request.prompt
    found = []
    for token in tokens:
        at = prompt.find(token)
        if at < 0:
            raise EaselError(f"X/Y/Z plot: Prompt order did not find '{token}' in the prompt")
        found.append((at, token))
    positions = sorted(found)
    pieces, last = [], 0
    for (at, old), new in zip(positions, tokens, strict=True):
        pieces += [prompt[last:at], new]
        last = at + len(old)
    pieces.append(prompt[last:])
    return replace(request, prompt="".join(pieces))


def _size(request: GenerationRequest, value: Any, _values: list[Any]) -> GenerationRequest:
    width, height = value
    return replace(request, width=width, height=height)


def _styles(request: GenerationRequest, value: Any, _values: list[Any]) -> GenerationRequest:
    names = tuple(s.strip() for s in str(value).split(",") if s.strip())
    return replace(request, styles=tuple(request.styles) + names)


def _vae(request: GenerationRequest, value: Any, _values: list[Any]) -> GenerationRequest:
    return replace(request, vae=str(value))


def _unsupported(label: str, modes: frozenset[str] = frozenset({"txt2img", "img2img"})) -> Axis:
    return Axis(label, "str", None, modes)


TXT2IMG = frozenset({"txt2img"})
IMG2IMG = frozenset({"img2img"})


def all_axes(catalog: Catalog) -> list[Axis]:
    """Every axis in A1111 1.10's order (before the per-mode filtering clients index into)."""
    samplers = lambda: SAMPLERS  # noqa: E731
    return [
        Axis("Nothing", "nothing", lambda r, _v, _vs: r),
        Axis("Seed", "int", _field("seed")),
        Axis("Var. seed", "int", _field("subseed")),
        Axis("Var. strength", "float", _field("subseed_strength")),
        Axis("Steps", "int", _field("steps")),
        Axis("Hires steps", "int", _field("hr_second_pass_steps"), TXT2IMG),
        Axis("CFG Scale", "float", _field("cfg_scale")),
        _unsupported("Image CFG Scale", IMG2IMG),
        Axis("Prompt S/R", "str", _prompt_sr),
        Axis("Prompt order", "order", _prompt_order),
        Axis("Sampler", "str", _field("sampler", _choice(samplers, "sampler")), TXT2IMG, samplers),
        Axis(
            "Hires sampler",
            "str",
            _field("hr_sampler_name", _choice(samplers, "sampler")),
            TXT2IMG,
            samplers,
        ),
        Axis("Sampler", "str", _field("sampler", _choice(samplers, "sampler")), IMG2IMG, samplers),
        Axis(
            "Checkpoint name",
            "str",
            _field("checkpoint", _choice(catalog.checkpoints, "checkpoint")),
            choices=catalog.checkpoints,
            cost=1.0,
        ),
        _unsupported("Negative Guidance minimum sigma"),
        _unsupported("Sigma Churn"),
        _unsupported("Sigma min"),
        _unsupported("Sigma max"),
        _unsupported("Sigma noise"),
        Axis(
            "Schedule type",
            "str",
            _field("schedule_type", _choice(lambda: SCHEDULE_TYPES, "schedule type")),
            choices=lambda: SCHEDULE_TYPES,
        ),
        _unsupported("Schedule min sigma"),
        _unsupported("Schedule max sigma"),
        _unsupported("Schedule rho"),
        _unsupported("Eta"),
        Axis("Clip skip", "int", _field("clip_skip")),
        Axis("Denoising", "float", _field("denoising_strength")),
        _unsupported("Initial noise multiplier"),
        _unsupported("Extra noise"),
        Axis(
            "Hires upscaler",
            "str",
            _field("hr_upscaler", _choice(lambda: tuple(HIRES_UPSCALERS), "upscaler")),
            TXT2IMG,
            lambda: tuple(HIRES_UPSCALERS),
        ),
        _unsupported("Cond. Image Mask Weight", IMG2IMG),
        Axis("VAE", "str", _vae, choices=lambda: ["Automatic", "None", *catalog.vaes()], cost=0.7),
        Axis("Styles", "str", _styles, choices=catalog.styles),
        _unsupported("UniPC Order"),
        _unsupported("Face restore"),
        _unsupported("Token merging ratio"),
        _unsupported("Token merging ratio high-res"),
        _unsupported("Always discard next-to-last sigma"),
        _unsupported("SGM noise multiplier"),
        _unsupported("Refiner checkpoint"),
        _unsupported("Refiner switch at"),
        _unsupported("RNG source"),
        _unsupported("FP8 mode"),
        Axis("Size", "size", _size),
        *_extension_axes(),
    ]


def _extension_axes() -> list[Axis]:
    """Every numeric field an extension registered (values go into ``request.extensions``)."""
    axes = []
    for item in FIELDS:
        if item.owner == CORE or item.kind not in (int, float) or item.owner == "xyz_grid":
            continue
        owner, short = item.name.split(".", 1)

        def apply(request: GenerationRequest, value: Any, _vs: list[Any], owner=owner, short=short) -> Any:
            values = {k: dict(v) for k, v in request.extensions.items()}
            values.setdefault(owner, {})[short] = value
            return replace(request, extensions=values)

        axes.append(Axis(item.title, "int" if item.kind is int else "float", apply))
    return axes


def axes_for(mode: str, catalog: Catalog) -> list[Axis]:
    """The list a tab's ``*_type`` index points into: A1111 drops the other mode's axes."""
    endpoint = "txt2img" if mode == "txt2img" else "img2img"
    return [a for a in all_axes(catalog) if endpoint in a.modes]


def pick_axis(axes: list[Axis], given: Any) -> Axis:
    """An axis by index (A1111 clients) or by label (any case)."""
    if isinstance(given, bool):
        raise EaselError("X/Y/Z plot: an axis type is an index or a label")
    if isinstance(given, int | float) and float(given).is_integer():
        index = int(given)
        if not 0 <= index < len(axes):
            raise EaselError(f"X/Y/Z plot: axis type {index} is out of range (0-{len(axes) - 1})")
        return axes[index]
    text = str(given or "Nothing").strip().lower()
    for axis in axes:
        if axis.label.lower() == text:
            return axis
    raise EaselError(f"X/Y/Z plot: unknown axis type '{given}'")


def _split(text: str) -> list[str]:
    return [v.strip() for v in itertools.chain.from_iterable(csv.reader(StringIO(text))) if v.strip()]


def _ints(items: list[str]) -> list[int]:
    out: list[int] = []
    for item in items:
        if m := _INT_RANGE.match(item):
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", ""))
            step = int(m.group(3)) if m.group(3) else 1
            if step == 0:
                raise EaselError(f"X/Y/Z plot: '{item}' has a step of 0")
            out += list(range(start, end + (1 if step > 0 else -1), step))
        elif m := _INT_COUNT.match(item):
            start, end, count = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", "")), int(m.group(3))
            out += [int(v) for v in np.linspace(start, end, count)]
        else:
            try:
                out.append(int(float(item)))
            except ValueError:
                raise EaselError(f"X/Y/Z plot: '{item}' is not a whole number or a range") from None
        if len(out) > MAX_VALUES:
            raise EaselError(f"X/Y/Z plot: more than {MAX_VALUES} values on one axis")
    return out


def _floats(items: list[str]) -> list[float]:
    out: list[float] = []
    for item in items:
        if m := _FLOAT_RANGE.match(item):
            start, end = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", ""))
            step = float(m.group(3)) if m.group(3) else 1.0
            if step == 0:
                raise EaselError(f"X/Y/Z plot: '{item}' has a step of 0")
            out += [round(float(v), 8) for v in np.arange(start, end + step / 2, step)]
        elif m := _FLOAT_COUNT.match(item):
            start, end, count = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", "")), m.group(3)
            out += [round(float(v), 8) for v in np.linspace(start, end, int(float(count)))]
        else:
            try:
                out.append(float(item))
            except ValueError:
                raise EaselError(f"X/Y/Z plot: '{item}' is not a number or a range") from None
        if len(out) > MAX_VALUES:
            raise EaselError(f"X/Y/Z plot: more than {MAX_VALUES} values on one axis")
    return out


def parse_values(axis: Axis, text: str, picked: Sequence[str] | None = None, raw: bool = False) -> list[Any]:
    """An axis's values from its text box, or from the multi-select when the axis has choices and some are picked.

    ``raw``: numbers taken as written, no ``a-b`` ranges (a list of negative numbers, say).
    """
    if axis.kind == "nothing":
        return [None]
    if not axis.supported:
        raise EaselError(f"X/Y/Z plot: the axis '{axis.label}' is not supported by Easel")
    items = list(picked) if axis.choices is not None and picked else _split(text or "")
    if not items:
        raise EaselError(f"X/Y/Z plot: give at least one value for '{axis.label}'")
    if raw and axis.kind in ("int", "float"):
        try:
            return [int(float(v)) if axis.kind == "int" else float(v) for v in items]
        except ValueError:
            raise EaselError(f"X/Y/Z plot: '{axis.label}' values must be numbers") from None
    if axis.kind == "int":
        return _ints(items)
    if axis.kind == "float":
        return _floats(items)
    if axis.kind == "size":
        sizes = []
        for item in items:
            m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", item)
            if not m:
                raise EaselError(f"X/Y/Z plot: size '{item}' must be written WIDTHxHEIGHT")
            sizes.append((int(m.group(1)), int(m.group(2))))
        return sizes
    if axis.kind == "order":
        return [list(p) for p in itertools.permutations(items)][:MAX_VALUES]
    if axis.choices is not None and axis.label not in ("Styles",):
        chosen = _choice(axis.choices, axis.label.lower())
        return [chosen(item) for item in items]
    return items


def fix_seeds(axis: Axis, values: list[Any]) -> list[Any]:
    """-1 seeds replaced by a random seed each (A1111, unless "Keep -1 for seeds")."""
    if axis.label in ("Seed", "Var. seed"):
        return [random.randint(0, MAX_SEED) if v in (None, -1) else v for v in values]
    return values


def format_value(axis: Axis, value: Any) -> str:
    if axis.kind == "nothing":
        return ""
    if axis.kind == "size":
        return f"{value[0]}x{value[1]}"
    if axis.kind == "order":
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label(axis: Axis, value: Any) -> str:
    """The label a grid shows for one value (A1111: "Steps: 20"; prompt S/R: the replacement alone)."""
    text = format_value(axis, value)
    if axis.label in ("Prompt S/R", "Prompt order", "Styles"):
        return text
    return f"{axis.label}: {text}"
