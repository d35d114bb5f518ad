"""X/Y/Z plot, built in: one image per combination of up to three axes' values, drawn into labelled grids.

Works as A1111's script of the same name: selected in the Script dropdown, or through the API with
``script_name: "x/y/z plot"`` and A1111's positional ``script_args``::

    [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
     draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, margin_size, csv_mode, raw_mode]

``*_type`` is an index into A1111's axis list for the tab (``axes.axes_for``) or an axis label. Each cell is one
``runner.generate`` call, so cells take queue turns like any request and a checkpoint axis switches models between
cells (the costliest axis runs outermost, so each model loads once), never in the middle of one.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipelines.errors import EaselError
from pipelines.fields import Widget
from pipelines.hooks import ScriptArg, ScriptRunner
from pipelines.requests import GenerationRequest, GenerationResult

from .axes import Axis, axes_for, fix_seeds, format_value, label, parse_values, pick_axis
from .grid import draw_grid, side_by_side

TITLE = "X/Y/Z plot"
MAX_CELLS = 1000


@dataclass
class Plan:
    axis: Axis
    values: list[Any]
    text: str  # as written (or the picked choices joined), for the infotext
    fixed: bool  # -1 seeds replaced by random ones


def _quote(value: str) -> str:
    """A1111 quotes an infotext value that holds a comma, a colon or a newline."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def _plan(axes: list[Axis], kind: Any, text: Any, picked: Any, keep_seeds: bool, csv_mode: bool, raw: bool) -> Plan:
    axis = pick_axis(axes, kind)
    chosen = [str(p) for p in picked] if isinstance(picked, list | tuple) else []
    use_picked = axis.choices is not None and not csv_mode and bool(chosen)
    values = parse_values(axis, "" if use_picked else str(text or ""), chosen if use_picked else None, raw=raw)
    fixed = not keep_seeds and axis.label in ("Seed", "Var. seed") and any(v in (None, -1) for v in values)
    if not keep_seeds:
        values = fix_seeds(axis, values)
    written = ", ".join(chosen) if use_picked else str(text or "")
    return Plan(axis, values, written, fixed)


def _grid_infotext(first: str, plans: list[tuple[str, Plan]]) -> str:
    extra = {"Script": TITLE}
    for name, plan in plans:
        if plan.axis.kind == "nothing":
            continue
        extra[f"{name} Type"] = plan.axis.label
        extra[f"{name} Values"] = plan.text
        if plan.fixed:
            extra[f"Fixed {name} Values"] = ", ".join(format_value(plan.axis, v) for v in plan.values)
    added = ", ".join(f"{k}: {_quote(v)}" for k, v in extra.items())
    head, sep, version = first.rpartition(", Version: ")
    return f"{head}, {added}{sep}{version}" if sep else f"{first}, {added}"


def run(request: GenerationRequest, args: list[Any], runner: ScriptRunner, catalog: Any) -> GenerationResult:
    (x_type, x_text, x_pick, y_type, y_text, y_pick, z_type, z_text, z_pick) = args[:9]
    legend, lone, sub_grids, keep_seeds, margin, csv_mode, raw = args[9:16]
    axes = axes_for(request.mode, catalog)
    keep_seeds = bool(keep_seeds)
    base = request if keep_seeds else request.validated()  # one seed for every cell unless -1 is kept
    plans = [
        ("X", _plan(axes, x_type, x_text, x_pick, keep_seeds, bool(csv_mode), bool(raw))),
        ("Y", _plan(axes, y_type, y_text, y_pick, keep_seeds, bool(csv_mode), bool(raw))),
        ("Z", _plan(axes, z_type, z_text, z_pick, keep_seeds, bool(csv_mode), bool(raw))),
    ]
    xs, ys, zs = (p.values for _, p in plans)
    count = len(xs) * len(ys) * len(zs)
    if count > MAX_CELLS:
        raise EaselError(f"X/Y/Z plot: {count} cells is more than {MAX_CELLS}; use fewer values")
    # The costliest axis outermost: a checkpoint axis then switches models once per value, not once per cell.
    order = sorted((2, 1, 0), key=lambda i: -plans[i][1].axis.cost)  # else Z, Y, X (X innermost), as A1111
    sizes = [len(xs), len(ys), len(zs)]
    indices = []
    for outer_first in itertools.product(*(range(sizes[a]) for a in order)):
        index = [0, 0, 0]
        for axis_index, value in zip(order, outer_first, strict=True):
            index[axis_index] = value
        indices.append(tuple(index))
    cells: dict[tuple[int, ...], GenerationResult] = {}
    for number, (ix, iy, iz) in enumerate(indices):
        if runner.job.interrupted:
            break
        cell = base
        for (_, plan), value in zip(plans, (xs[ix], ys[iy], zs[iz]), strict=True):
            cell = plan.axis.apply(cell, value, plan.values) if plan.axis.apply else cell
        with runner.job.part(number, len(indices)):  # the bar runs over the whole grid, cell after cell
            cells[(ix, iy, iz)] = runner.generate(cell)
    return _assemble(base, plans, cells, sizes, runner, bool(legend), bool(lone), bool(sub_grids), int(margin or 0))


def _assemble(
    base: GenerationRequest,
    plans: list[tuple[str, Plan]],
    cells: dict[tuple[int, ...], GenerationResult],
    sizes: list[int],
    runner: ScriptRunner,
    legend: bool,
    lone: bool,
    sub_grids: bool,
    margin: int,
) -> GenerationResult:
    done = [r for r in cells.values() if r.images]
    if not done:
        return GenerationResult([], [], [], [], base, "", None, interrupted=True)
    first = done[0]
    blank = Image.new("RGB", first.images[0].size, (0, 0, 0))
    (_, px), (_, py), (_, pz) = plans
    grids: list[Image.Image] = []
    texts: list[str] = []
    z_labels = [label(pz.axis, z) if pz.axis.kind != "nothing" else "" for z in pz.values]
    for iz in range(sizes[2]):
        rows = []
        for iy in range(sizes[1]):
            row = []
            for ix in range(sizes[0]):
                result = cells.get((ix, iy, iz))
                row.append(result.images[0] if result and result.images else blank)
            rows.append(row)
        cols = [label(px.axis, x) if px.axis.kind != "nothing" else "" for x in px.values]
        rows_text = [label(py.axis, y) if py.axis.kind != "nothing" else "" for y in py.values]
        title = z_labels[iz] if sizes[2] > 1 else ""
        grids.append(draw_grid(rows, cols, rows_text, title=title, margin=margin, legend=legend))
        texts.append(_grid_infotext(first.infotexts[0], plans))
    main = grids[0] if len(grids) == 1 else side_by_side(grids, [""] * len(grids), margin)
    text = texts[0]
    paths = [p for p in (runner.save_grid(main, text, base),) if p]
    images, seeds, infotexts = [main], [first.seeds[0]], [text]
    if len(grids) > 1:
        for grid, grid_text in zip(grids, texts, strict=True):
            saved = runner.save_grid(grid, grid_text, base)  # one grid per Z value, as well as all of them
            paths += [saved] if saved else []
            if sub_grids:
                images.append(grid)
                seeds.append(first.seeds[0])
                infotexts.append(grid_text)
    interrupted = len(cells) < sizes[0] * sizes[1] * sizes[2] or any(r.interrupted for r in cells.values())
    subseed = first.subseeds[0] if first.subseeds else base.subseed
    subseeds = [subseed] * len(images)
    prompts = [first.prompts[0] if first.prompts else base.prompt] * len(images)
    negatives = [first.negative_prompts[0] if first.negative_prompts else base.negative_prompt] * len(images)
    for result in cells.values():
        paths += result.paths
        if lone:
            images += result.images
            seeds += result.seeds
            infotexts += result.infotexts
            subseeds += result.subseeds or [subseed] * len(result.images)
            prompts += result.prompts or [result.request.prompt] * len(result.images)
            negatives += result.negative_prompts or [result.request.negative_prompt] * len(result.images)
    return GenerationResult.combined(
        base,
        list(cells.values()),
        images,
        seeds,
        infotexts,
        paths,
        interrupted=interrupted,
        subseeds=subseeds,
        prompts=prompts,
        negative_prompts=negatives,
    )


def _args(labels: list[str]) -> list[ScriptArg]:
    axis = lambda name: Widget("dropdown", f"{name} type", f"{name.lower()}_type", choices=lambda: labels, index=True)  # noqa: E731
    values = lambda name: Widget("textbox", f"{name} values", f"{name.lower()}_values")  # noqa: E731
    picked = lambda name: Widget("multiselect", f"{name} values", f"{name.lower()}_values_dropdown")  # noqa: E731
    out: list[ScriptArg] = []
    for name, default in (("X", 1), ("Y", 0), ("Z", 0)):
        out += [ScriptArg(axis(name), default), ScriptArg(values(name), ""), ScriptArg(picked(name), [])]
    out += [
        ScriptArg(Widget("checkbox", "Draw legend", "draw_legend"), True),
        ScriptArg(Widget("checkbox", "Include Sub Images", "include_lone_images"), False),
        ScriptArg(Widget("checkbox", "Include Sub Grids", "include_sub_grids"), False),
        ScriptArg(Widget("checkbox", "Keep -1 for seeds", "no_fixed_seeds"), False),
        ScriptArg(Widget("slider", "Grid margins (px)", "margin_size", 0, 500, 2), 0),
        ScriptArg(Widget("checkbox", "Use text inputs instead of dropdowns", "csv_mode"), False),
        ScriptArg(Widget("checkbox", "Take values as written (no ranges)", "raw_mode"), False),
    ]
    return out


def setup(ctx: Any) -> None:
    catalog = ctx.catalog
    labels = [a.label for a in axes_for("txt2img", catalog)]

    def ui(tab: str) -> list[Any]:
        from .ui import build_ui

        return build_ui(tab, catalog)

    ctx.script(
        TITLE,
        lambda request, args, runner: run(request, args, runner, catalog),
        _args(labels),
        modes=("txt2img", "img2img", "inpaint"),
        ui=ui,
    )
