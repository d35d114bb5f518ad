"""The built-in X/Y/Z plot in-process: A1111's value syntax, its axis indices, the grid, its infotext, and a
checkpoint axis over two tiny checkpoints that switches models once per value (the queue's order, never mid-job)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import EaselError
from pipelines.extensions.loader import MODULE_PREFIX, LoadedExtensions
from pipelines.generate import Engine
from pipelines.metadata.infotext import parse_infotext
from pipelines.requests import GenerationRequest
from pipelines.runtime.jobs import Job

NOTHING = ["", []]


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path, builtins: LoadedExtensions) -> Engine:
    engine = make_engine(tmp_path / "outputs")
    assert builtins.get("xyz_grid").active  # type: ignore[union-attr]
    engine.hooks = builtins.hooks
    builtins.catalog.bind(checkpoints=lambda: [c.name for c in engine.manager.checkpoints])
    engine.manager.activate("tiny-sd1.safetensors")
    return engine


def axes() -> Any:
    return sys.modules[MODULE_PREFIX + "xyz_grid.axes"]


def xyz_args(x: list[Any], y: list[Any] | None = None, z: list[Any] | None = None, **options: Any) -> list[Any]:
    """A1111 1.10's positional script_args: 3 x (type, values, dropdown), then the options."""
    flags = {"draw_legend": True, "include_lone_images": False, "include_sub_grids": False, "no_fixed_seeds": False}
    flags |= {"margin_size": 0, "csv_mode": False, "raw_mode": False} | options
    return [*x, *(y or [0, *NOTHING]), *(z or [0, *NOTHING]), *flags.values()]


def tiny(**extra: Any) -> GenerationRequest:
    values: dict[str, Any] = {"prompt": "a red boat", "steps": 2, "width": 64, "height": 64, "seed": 9}
    values.update(extra)
    return GenerationRequest(**values)


def test_values_parse_as_a1111_writes_them(builtins: LoadedExtensions) -> None:
    a = axes()
    steps = a.pick_axis(a.axes_for("txt2img", builtins.catalog), 4)
    cfg = a.pick_axis(a.axes_for("txt2img", builtins.catalog), "cfg scale")
    assert steps.label == "Steps" and cfg.label == "CFG Scale"
    assert a.parse_values(steps, "1, 2, 3") == [1, 2, 3]
    assert a.parse_values(steps, "1-5") == [1, 2, 3, 4, 5]
    assert a.parse_values(steps, "1-10 (+2)") == [1, 3, 5, 7, 9]
    assert a.parse_values(steps, "10-1 (-3)") == [10, 7, 4, 1]
    assert a.parse_values(steps, "1-10 [5]") == [1, 3, 5, 7, 10]
    assert a.parse_values(cfg, "5-7 (+0.5)") == [5, 5.5, 6, 6.5, 7]
    assert a.parse_values(cfg, "1-2 [3]") == [1, 1.5, 2]
    assert a.parse_values(cfg, "-1, -2", raw=True) == [-1.0, -2.0]
    with pytest.raises(EaselError, match="not a whole number"):
        a.parse_values(steps, "many")
    labels = [x.label for x in a.axes_for("txt2img", builtins.catalog)]
    assert labels[:12] == [
        "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
        "Prompt order", "Sampler", "Hires sampler", "Checkpoint name",
    ]  # fmt: skip
    img2img = [x.label for x in a.axes_for("img2img", builtins.catalog)]
    assert img2img[5:8] == ["CFG Scale", "Image CFG Scale", "Prompt S/R"] and "Hires steps" not in img2img
    sampler = a.pick_axis(a.axes_for("txt2img", builtins.catalog), "Sampler")
    assert a.parse_values(sampler, "", ["euler a", "DPM++ 2M"]) == ["Euler a", "DPM++ 2M"]
    with pytest.raises(EaselError, match="not supported by Easel"):
        a.parse_values(a.pick_axis(a.axes_for("txt2img", builtins.catalog), "Eta"), "0.5")


def test_steps_by_prompt_sr_grid_with_infotext_and_saved_files(engine: Engine) -> None:
    args = xyz_args([4, "1, 2", []], [7, "red, blue", []], include_lone_images=True)
    job = Job()
    seen: list[tuple[int, int, float]] = []
    real_advance = job.advance

    def advance(step: int) -> None:
        real_advance(step)
        seen.append((job.batch_index, job.batch_total, job.fraction))

    job.advance = advance  # type: ignore[method-assign]
    result = engine.generate(tiny(script="X/Y/Z Plot", script_args=args), job)
    # progress runs over the whole grid: cell k of 4 shows as part k, and the fraction never goes back
    assert {total for _, total, _ in seen} == {4} and [i for i, _, _ in seen][-1] == 3
    fractions = [f for _, _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    grid, *cells = result.images
    assert len(cells) == 4 and grid.width > 2 * 64 and grid.height > 2 * 64  # cells plus the labels
    fields = parse_infotext(result.infotexts[0])
    assert fields["Script"] == "X/Y/Z plot" and fields["X Type"] == "Steps" and fields["X Values"] == "1, 2"
    assert fields["Y Type"] == "Prompt S/R" and fields["Y Values"] == "red, blue"
    cell_prompts = [parse_infotext(t)["Prompt"] for t in result.infotexts[1:]]
    assert cell_prompts == ["a red boat", "a red boat", "a blue boat", "a blue boat"]
    assert [parse_infotext(t)["Steps"] for t in result.infotexts[1:]] == ["1", "2", "1", "2"]
    assert len(set(result.seeds)) == 1  # one fixed seed for every cell
    grids = list((engine.outputs_dir / "txt2img-grids").rglob("*.png"))
    assert len(grids) == 1 and len(list((engine.outputs_dir / "txt2img-images").rglob("*.png"))) == 4
    # the grid's background shows around the labels: the top-left corner is white, a cell is not
    assert grid.getpixel((2, 2)) == (255, 255, 255)


def test_checkpoint_axis_switches_once_per_model_and_restores_the_first(engine: Engine, monkeypatch) -> None:
    switches: list[str] = []
    activate = engine.manager.activate

    def counting(name: str) -> Any:
        active = engine.manager.active
        if active is None or active.info.name != name:
            switches.append(name)
        return activate(name)

    monkeypatch.setattr(engine.manager, "activate", counting)
    names = "tiny-sd1.safetensors, tiny-sd1-diffusers"
    args = xyz_args([1, "1-3", []], [11, "", ["tiny-sd1-diffusers", "tiny-sd1.safetensors"]], include_lone_images=True)
    result = engine.generate(tiny(script="x/y/z plot", script_args=args, checkpoint="tiny-sd1.safetensors"))
    models = [parse_infotext(t)["Model"] for t in result.infotexts[1:]]
    assert models == ["tiny-sd1-diffusers"] * 3 + ["tiny-sd1"] * 3
    assert switches == ["tiny-sd1-diffusers", "tiny-sd1.safetensors"]  # the costly axis ran outermost
    assert engine.manager.active.info.name == "tiny-sd1.safetensors"  # type: ignore[union-attr]
    fields = parse_infotext(result.infotexts[0])
    assert fields["Y Type"] == "Checkpoint name" and fields["Y Values"] == "tiny-sd1-diffusers, tiny-sd1.safetensors"
    assert fields["X Values"] == "1-3" and [parse_infotext(t)["Seed"] for t in result.infotexts[1:4]] == ["1", "2", "3"]
    assert names  # the two tiny checkpoints of the shared models folder


def test_z_axis_gives_a_grid_per_value_and_bad_args_are_clear(engine: Engine) -> None:
    args = xyz_args([4, "1, 2", []], z=[6, "3, 9", []], include_sub_grids=True)
    result = engine.generate(tiny(script="x/y/z plot", script_args=args))
    main, *per_z = result.images
    assert len(per_z) == 2 and main.width > 2 * per_z[0].width - 1
    assert len(list((engine.outputs_dir / "txt2img-grids").rglob("*.png"))) == 3
    with pytest.raises(EaselError, match="axis type 99 is out of range"):
        engine.generate(tiny(script="x/y/z plot", script_args=xyz_args([99, "1", []])))
    with pytest.raises(EaselError, match="script 'nope' not found"):
        engine.generate(tiny(script="nope"))
    with pytest.raises(EaselError, match="did not find 'green'"):
        engine.generate(tiny(script="x/y/z plot", script_args=xyz_args([7, "green, blue", []])))


def test_prompts_from_file_runs_a_generation_per_line(engine: Engine) -> None:
    text = 'a lighthouse\n--prompt "a tall ship" --steps 1 --seed 40 --negative_prompt "fog"\n\n'
    text += "--prompt castle --n_iter 2\n"
    args = [True, False, "end", text]  # iterate seeds, not one seed for all, the lines' prompts after the tab's
    script = "Prompts from file or textbox"
    result = engine.generate(tiny(prompt="oil painting", seed=7, script=script, script_args=args))
    fields = [parse_infotext(t) for t in result.infotexts]
    prompts = ["oil painting a lighthouse", "oil painting a tall ship", "oil painting castle", "oil painting castle"]
    assert [f["Prompt"] for f in fields] == prompts
    assert [f["Seed"] for f in fields] == ["7", "40", "9", "10"]  # iterated per line; a line's own seed wins
    assert fields[1]["Steps"] == "1" and fields[1]["Negative prompt"] == "fog" and fields[0]["Steps"] == "2"
    with pytest.raises(EaselError, match="line 1: unknown option --nope"):
        engine.generate(tiny(script=script, script_args=[False, False, "start", "--nope 1"]))
    with pytest.raises(EaselError, match="line 2: --tiling is not supported"):
        engine.generate(tiny(script=script.lower(), script_args=[False, False, "start", "a\n--tiling true"]))
