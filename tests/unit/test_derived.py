"""webui/derived.py: Generate recomputes every derived State from the widgets, in order, before it runs."""

from __future__ import annotations

import gradio as gr

from webui.derived import collecting, derive, sync_function


def test_derivations_are_recorded_and_recomputed_in_order() -> None:
    with gr.Blocks(), collecting() as derived:
        a = gr.Number(1)
        b = gr.Number(2)
        inner = gr.JSON({})
        outer = gr.State({})
        derive(lambda x, y: {"sum": x + y}, [a, b], inner)
        derive(lambda unit, y: {"unit": unit, "b": y}, [inner, b], outer)  # built from the first one's output
    assert [d.output for d in derived] == [inner, outer]
    sync, sources, outputs = sync_function(derived)
    assert sources == [a, b, inner] and outputs == [inner, outer]
    # a stale value for ``inner`` (its change event not run yet) is replaced by the recomputed one
    assert sync(5, 7, {"sum": 3}) == [{"sum": 12}, {"unit": {"sum": 12}, "b": 7}]


def test_outside_a_tab_nothing_is_recorded() -> None:
    with gr.Blocks(), collecting() as outer_tab:
        with collecting() as inner_tab:
            derive(lambda x: x, [gr.Number(1)], gr.State(0))
        derive(lambda x: x, [gr.Number(2)], gr.State(0))
    assert len(inner_tab) == 1 and len(outer_tab) == 1
    with gr.Blocks():
        derive(lambda x: x, [gr.Number(3)], gr.State(0))  # no tab collecting: only the change event
