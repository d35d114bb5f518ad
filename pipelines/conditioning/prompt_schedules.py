"""Prompt editing ``[from:to:when]`` and alternation ``[a|b]``: one prompt text per sampling step."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipelines.errors import EaselError

# ----------------------------------------------------------------------------------------------------------------
# Prompt editing [from:to:when] and alternation [a|b]


@dataclass
class _Scheduled:
    before: list[_Node]
    after: list[_Node]
    when: float


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Scheduled | _Alternate


class _NoParse(Exception):
    """A bracket group that is not valid schedule syntax."""


MAX_BRACKET_DEPTH = 64
"""Deepest nesting of ``[`` / ``(`` groups a prompt schedule may have. The parser recurses once per level, so an
unbounded depth (1000 ``[``) overflowed Python's stack; no prompt written by a person nests anywhere near this."""

_PLAIN = re.compile(r"[^\\\[\]():|]+")
_NUMBER_THEN_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


class _ScheduleParser:
    """Recursive descent over A1111's prompt-editing grammar.

    Inside a bracket group everything must be valid; at the top level a bracket that does not start a valid
    group is literal text (as A1111's grammar allows), and a ``|`` outside any alternation makes the whole
    prompt unparsable, which A1111 answers by using the prompt unchanged for every step.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._depth = 0

    def parse(self) -> list[_Node] | None:
        text, nodes, position = self.text, [], 0
        while position < len(text):
            char = text[position]
            if char in "[(":
                try:
                    group, position = self._group(position)
                except _NoParse:
                    nodes.append(char)
                    position += 1
                    continue
                nodes.extend(group)
            elif char in "]):":
                nodes.append(char)
                position += 1
            elif char == "|":
                return None
            else:
                position = self._plain(position, nodes)
        return nodes

    def _plain(self, position: int, nodes: list[_Node]) -> int:
        text = self.text
        if text[position] == "\\":  # an escape stays in the text for the emphasis parser
            nodes.append(text[position : position + 2])
            return position + 2
        match = _PLAIN.match(text, position)
        assert match is not None
        nodes.append(match.group(0))
        return match.end()

    def _sequence(self, position: int) -> tuple[list[_Node], int]:
        """Text and groups up to the next ``] ) : |`` (or the end), which is left for the caller."""
        text, nodes = self.text, []
        while position < len(text):
            char = text[position]
            if char in "[(":
                group, position = self._group(position)
                nodes.extend(group)
            elif char in "]):|":
                break
            else:
                position = self._plain(position, nodes)
        return nodes, position

    def _at(self, position: int) -> str:
        return self.text[position] if position < len(self.text) else ""

    def _group(self, position: int) -> tuple[list[_Node], int]:
        """One bracket group; the depth bound keeps the recursion (and the re-scans after a failed group) small."""
        self._depth += 1
        try:
            if self._depth > MAX_BRACKET_DEPTH:
                raise EaselError(
                    f"The prompt's brackets are nested more than {MAX_BRACKET_DEPTH} deep (at character "
                    f"{position + 1}). Close some of them, or write literal brackets as \\( \\[."
                )
            return self._group_body(position)
        finally:
            self._depth -= 1

    def _group_body(self, position: int) -> tuple[list[_Node], int]:
        opening = self.text[position]
        first, position = self._sequence(position + 1)
        char = self._at(position)
        if opening == "(":
            if char == ")":
                return ["(", *first, ")"], position + 1
            if char == ":":
                second, position = self._sequence(position + 1)
                if self._at(position) == ")":
                    return ["(", *first, ":", *second, ")"], position + 1
            raise _NoParse
        if char == "]":
            return ["[", *first, "]"], position + 1
        if char == "|":
            options = [first]
            while self._at(position) == "|":
                option, position = self._sequence(position + 1)
                options.append(option)
            if self._at(position) != "]":
                raise _NoParse
            return [_Alternate(options)], position + 1
        if char == ":":
            number = _NUMBER_THEN_CLOSE.match(self.text, position + 1)
            if number:  # [to:when]
                return [_Scheduled([], first, float(number.group(1)))], number.end()
            second, position = self._sequence(position + 1)
            if self._at(position) == ":":
                number = _NUMBER_THEN_CLOSE.match(self.text, position + 1)
                if number:  # [from:to:when], [from::when]
                    return [_Scheduled(first, second, float(number.group(1)))], number.end()
        raise _NoParse


def _switch_step(when: float, steps: int) -> int:
    """``when`` below 1 is a fraction of the steps, otherwise a step number; capped at ``steps``."""
    return min(steps, int(when * steps if when < 1 else when))


def _collect_steps(nodes: Sequence[_Node], steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _switch_step(node.when, steps)
            if step >= 1:
                found.add(step)
            _collect_steps(node.before, steps, found)
            _collect_steps(node.after, steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, found)


def _render(nodes: Sequence[_Node], step: int, steps: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _switch_step(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


def schedule_prompt(text: str, steps: int) -> list[tuple[int, str]]:
    """``[(until_step, text), ...]`` for prompt editing and alternation, like A1111's prompt schedules.

    ``[from:to:when]`` shows ``from`` until step ``when`` (a fraction of ``steps`` when below 1), then ``to``;
    ``[to:when]`` adds text, ``[from::when]`` removes it; groups nest. ``[a|b]`` alternates every step. Steps
    here are 1-based, as in A1111; a prompt without any of this gives ``[(steps, text)]``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if "[" not in text:
        return [(steps, text)]
    nodes = _ScheduleParser(text).parse()
    if nodes is None:
        return [(steps, text)]
    switch_steps = {steps}
    _collect_steps(nodes, steps, switch_steps)
    return [(step, _render(nodes, step, steps)) for step in sorted(switch_steps)]


def conditioning_schedule(text: str, steps: int) -> list[str]:
    """The prompt text for each sampling step ``0 .. steps-1``.

    Step ``i`` uses the first schedule entry whose ``until_step >= i``, exactly as A1111's sampler looks it up
    (its step counter starts at 0), so ``[a:b:10]`` at 20 steps uses ``a`` for steps 0-10 and an alternation
    uses its first option for steps 0 and 1. ``steps`` is the number of steps the sampler actually runs.
    """
    schedule = schedule_prompt(text, steps)
    per_step: list[str] = []
    entry = 0
    for step in range(steps):
        while schedule[entry][0] < step:
            entry += 1
        per_step.append(schedule[entry][1])
    return per_step


class StepRange(NamedTuple):
    """Steps ``start .. stop-1`` use ``text``."""

    start: int
    stop: int
    text: str


def group_steps(per_step: Sequence[str]) -> list[StepRange]:
    """Group consecutive equal texts, so the engine changes conditioning only where the text changes."""
    ranges: list[StepRange] = []
    for step, text in enumerate(per_step):
        if ranges and ranges[-1].text == text:
            ranges[-1] = ranges[-1]._replace(stop=step + 1)
        else:
            ranges.append(StepRange(step, step + 1, text))
    return ranges
