"""A1111 prompt syntax, pure Python: emphasis ``(x:1.2)``/``[x]``, ``BREAK``, ``<lora:name:weight>`` tags."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipelines.errors import EaselError

CHUNK_LENGTH = 75
"""Prompt tokens in one chunk; with the start and end tokens a chunk fills CLIP's 77 positions."""
CHUNK_IDS = CHUNK_LENGTH + 2
COMMA_PADDING_BACKTRACK = 20
"""A chunk that fills up within this many tokens of a comma moves the words after the comma to the next chunk."""
ROUND_BRACKET_WEIGHT = 1.1
SQUARE_BRACKET_WEIGHT = 1 / 1.1
BREAK = ("BREAK", -1.0)
"""What ``parse_prompt_attention`` yields for the ``BREAK`` keyword."""
KINDS = ("sd1", "sd2", "sdxl", "sdxl_refiner")
_ENCODERS_PER_KIND = {"sd1": 1, "sd2": 1, "sdxl": 2, "sdxl_refiner": 1}


# ----------------------------------------------------------------------------------------------------------------
# Emphasis: (x), [x], (x:1.3), BREAK


class _Run(NamedTuple):
    text: str
    weight: float
    is_break: bool = False


_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]                # an escaped bracket or backslash: literal
    | \\                          # a lone backslash: dropped
    | \(
    | \[
    | :\s*([+-]?[.\d]+)\s*\)      # ":1.3)" closes a round bracket with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+               # plain text
    | :
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def _parse_attention_runs(text: str) -> list[_Run]:
    """Split ``text`` into runs of equal weight; BREAK markers are flagged so no text can pass for one."""
    runs: list[list[Any]] = []  # [text, weight, is_break], mutable while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if not run[2]:
                run[1] *= factor

    def add_text(piece: str) -> None:
        for index, part in enumerate(_BREAK_WORD.split(piece)):
            if index > 0:
                runs.append([BREAK[0], BREAK[1], True])
            runs.append([part, 1.0, False])

    for match in _ATTENTION_TOKEN.finditer(text):
        piece, explicit_weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0, False])
        elif piece == "(":
            open_round.append(len(runs))
        elif piece == "[":
            open_square.append(len(runs))
        elif explicit_weight is not None and open_round:
            try:
                factor = float(explicit_weight)
            except ValueError:  # "(x:1.2.3)": A1111 crashes; keep it as text and leave the bracket open
                add_text(piece)
                continue
            scale_from(open_round.pop(), factor)
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND_BRACKET_WEIGHT)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_BRACKET_WEIGHT)
        else:  # plain text, a stray ")" or "]", a ":" outside a weight
            add_text(piece)

    # Unclosed brackets reach to the end of the prompt.
    for start in open_round:
        scale_from(start, ROUND_BRACKET_WEIGHT)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_WEIGHT)

    merged: list[_Run] = []
    for text_part, weight, is_break in runs:
        if not is_break and not text_part:
            continue
        if merged and not is_break and not merged[-1].is_break and merged[-1].weight == weight:
            merged[-1] = _Run(merged[-1].text + text_part, weight)
        else:
            merged.append(_Run(text_part, weight, is_break))
    return merged or [_Run("", 1.0)]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` runs with A1111's emphasis rules.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:1.3)`` multiplies by 1.3, nesting multiplies;
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal; an unclosed bracket reaches to the end, a stray closing
    one is kept as text. Adjacent runs of equal weight merge. The word ``BREAK`` yields ``("BREAK", -1.0)``;
    unlike A1111, a BREAK inside brackets still breaks (A1111 scales its marker and then encodes the word).
    """
    return [BREAK if run.is_break else (run.text, run.weight) for run in _parse_attention_runs(text)]


# ----------------------------------------------------------------------------------------------------------------
# Extra-network tags: <lora:name:weight>


@dataclass(frozen=True)
class NetworkTag:
    """An extra-network tag taken out of a prompt, e.g. ``<lora:name:0.8>``.

    ``weight`` is the text-encoder weight (A1111's first number); ``unet_weight`` is set only when the tag
    gives a second number or ``unet=``, and otherwise means "the same as weight".
    """

    kind: str
    name: str
    weight: float = 1.0
    unet_weight: float | None = None


_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


def _tag_number(value: str, tag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise EaselError(f"The weight {value.strip()!r} in {tag} is not a number.")
    return number


def _network_tag(match: re.Match[str]) -> NetworkTag:
    tag = match.group(0)
    name, *arguments = (part.strip() for part in match.group(2).split(":"))
    if not name:
        raise EaselError(f"The tag {tag} has no name.")
    positional: list[float] = []
    named: dict[str, float] = {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals:
            named[key.strip().lower()] = _tag_number(value, tag)
        else:
            positional.append(_tag_number(argument, tag))
    weight = named.get("te", positional[0] if positional else 1.0)
    unet_weight = named.get("unet", positional[1] if len(positional) > 1 else None)
    return NetworkTag(kind=match.group(1).lower(), name=name, weight=weight, unet_weight=unet_weight)


def extract_network_tags(text: str) -> tuple[str, list[NetworkTag]]:
    """Remove every ``<kind:name[:te_weight[:unet_weight]]>`` tag from ``text`` and return them in order.

    As in A1111 any ``<word:...>`` is an extra-network tag (``lora``, ``lyco``, ``hypernet``...); the caller
    decides which kinds it supports. The rest of the text is left exactly as it was. A weight that is not a
    number raises ``EaselError`` naming the tag.
    """
    if "<" not in text:
        return text, []
    tags = [_network_tag(match) for match in _NETWORK_TAG.finditer(text)]
    return _NETWORK_TAG.sub("", text), tags
