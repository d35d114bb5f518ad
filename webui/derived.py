"""Values a generation handler reads from a State (or hidden JSON) that widgets' change events keep up to date.

Tabs pass the hires fix, the refiner, the styles and every extension's fields to their handlers as States, so the
endpoints keep A1111's positional signature. A change event updates such a State a moment after the widget moves;
a Generate click that overtakes it (a busy server, a slow network) would run with the previous value. So each
derivation is recorded while a tab is built, and the tab's Generate first recomputes all of them from the widgets
(in the order they were declared, so one built from another sees its new value), then runs the generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr

_collecting: list[list[Derivation]] = []


@dataclass(frozen=True)
class Derivation:
    fn: Callable[..., Any]
    inputs: tuple[Any, ...]
    output: Any


def derive(fn: Callable[..., Any], inputs: Sequence[Any], output: Any) -> None:
    """Keep ``output`` equal to ``fn(*inputs)`` on every change, and record it for the tab's Generate."""
    widgets = list(inputs)
    for widget in widgets:
        widget.change(fn, widgets, output, queue=False, api_visibility="private")
    if _collecting:
        _collecting[-1].append(Derivation(fn, tuple(widgets), output))


@contextmanager
def collecting() -> Iterator[list[Derivation]]:
    """The derivations declared while a tab is built (nested tabs collect their own)."""
    found: list[Derivation] = []
    _collecting.append(found)
    try:
        yield found
    finally:
        _collecting.pop()


def sync_function(derivations: Sequence[Derivation]) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """``(fn, inputs, outputs)`` of one event recomputing every derivation in order from the widgets' values."""
    sources: list[Any] = []
    for item in derivations:
        sources += [c for c in item.inputs if all(c is not s for s in sources)]
    outputs = [item.output for item in derivations]

    def sync(*values: Any) -> Any:
        current = {id(component): value for component, value in zip(sources, values, strict=True)}
        results = []
        for item in derivations:
            result = item.fn(*(current[id(c)] for c in item.inputs))
            current[id(item.output)] = result
            results.append(result)
        return results[0] if len(results) == 1 else results

    return sync, sources, outputs


def click_after_sync(button: gr.Button, derivations: Sequence[Derivation], fn: Callable[..., Any], **event: Any) -> Any:
    """``button.click(fn, **event)``, the tab's derived values recomputed first (the API endpoint is unchanged)."""
    if not derivations:
        return button.click(fn, **event)
    sync, sources, outputs = sync_function(derivations)
    first = button.click(sync, sources, outputs, queue=False, api_visibility="private")
    return first.then(fn, **event)
