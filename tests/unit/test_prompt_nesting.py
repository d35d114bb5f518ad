"""Prompt schedules on hostile input: any prompt of bounded size parses or is refused clearly, never a crash."""

from __future__ import annotations

import random
import time

import pytest

from pipelines.conditioning.prompt_schedules import MAX_BRACKET_DEPTH, conditioning_schedule, schedule_prompt
from pipelines.conditioning.syntax import parse_prompt_attention
from pipelines.errors import EaselError


@pytest.mark.parametrize(
    "prompt",
    [
        "[" * 1000,
        "(" * 1000 + "[a:b:3]",
        "[a|" * 600,
        "[a:" * 600,
        "[(" * 500 + "x" + ")]" * 500,
        "[" * 100_000,
    ],
    ids=["squares", "rounds-then-edit", "alternations", "edits", "closed", "very-long"],
)
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(prompt: str) -> None:
    """1000 ``[`` once raised RecursionError in the recursive-descent parser (a 500 from the API)."""
    with pytest.raises(EaselError, match=f"nested more than {MAX_BRACKET_DEPTH} deep"):
        conditioning_schedule(prompt, 20)


def test_nesting_up_to_the_limit_still_schedules() -> None:
    depth = MAX_BRACKET_DEPTH - 1
    prompt = "(" * depth + "[cat:dog:0.5]" + ")" * depth
    schedule = schedule_prompt(prompt, 10)
    assert schedule == [(5, "(" * depth + "cat" + ")" * depth), (10, "(" * depth + "dog" + ")" * depth)]


def test_emphasis_and_braces_alone_are_not_limited() -> None:
    """Without ``[`` there is no schedule to parse; emphasis is parsed with explicit stacks, at any depth."""
    assert conditioning_schedule("(" * 5000 + "x", 2) == ["(" * 5000 + "x"] * 2
    assert schedule_prompt("{" * 5000 + "[a|b]", 2) == [(1, "{" * 5000 + "a"), (2, "{" * 5000 + "b")]
    runs = parse_prompt_attention("(" * 5000 + "x" + ")" * 5000)
    assert len(runs) == 1 and runs[0][0] == "x"


def test_random_bracket_soup_never_crashes() -> None:
    """Long random prompts of the syntax's own characters: a schedule or an EaselError, and quickly."""
    rng = random.Random(7)
    deadline = time.monotonic() + 10
    outcomes = {"parsed": 0, "refused": 0}
    for alphabet in ("[]()|:{}\\ ab0.5", "[[]()::{ ab0.5", "[[[]((:) ab", "[[[[(]:a"):
        for length in (10, 100, 1000, 20_000) * 3:
            prompt = "".join(rng.choice(alphabet) for _ in range(length))
            try:
                assert len(conditioning_schedule(prompt, 8)) == 8
                outcomes["parsed"] += 1
            except EaselError:
                outcomes["refused"] += 1
            assert time.monotonic() < deadline, "parsing took too long"
    assert outcomes["parsed"] > 0 and outcomes["refused"] > 0
