"""The built-in SD upscale script through Engine.generate: sizes as A1111 rounds them, its seeds per tile, the
upscaler by index or name, progress across tiles, an interrupt between tiles, the saved picture and bad args."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from pipelines.errors import EaselError
from pipelines.extensions.loader import LoadedExtensions
from pipelines.generate import Engine
from pipelines.metadata.infotext import parse_infotext
from pipelines.requests import GenerationRequest
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary
from pipelines.upscalers.tiles import tile_count
from tests.upscaler_models import add_upscalers


@pytest.fixture
def engine(make_engine: Callable[[Path], Engine], tmp_path: Path, builtins: LoadedExtensions) -> Engine:
    engine = make_engine(tmp_path / "outputs")
    assert builtins.get("sd_upscale").active  # type: ignore[union-attr]
    engine.hooks = builtins.hooks
    add_upscalers(tmp_path / "models")
    engine.upscalers = UpscalerLibrary(UpscalerFolders.from_models_dir(tmp_path / "models"), tile=32, tile_overlap=4)
    engine.manager.activate("tiny-sd1.safetensors")
    return engine


def picture(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 40, 40))
    ImageDraw.Draw(image).ellipse((4, 4, width - 4, height - 4), fill=(30, 160, 220))
    return image


def request(init: Image.Image, args: list[Any], **extra: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "mode": "img2img",
        "prompt": "a harbour",
        "init_image": init,
        "steps": 2,
        "denoising_strength": 0.5,
        "width": 64,
        "height": 64,
        "seed": 9,
        "script": "SD upscale",
        "script_args": tuple(args),
    }
    return GenerationRequest(**(values | extra))


def spy(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[GenerationRequest, Any]]:
    """Every tile's request and the job's progress right after it (the script calls the engine per tile)."""
    calls: list[tuple[GenerationRequest, Any]] = []
    real = engine.generate

    def generate(inner: GenerationRequest, job: Any = None) -> Any:
        result = real(inner, job)
        if inner.script is None:
            calls.append((inner, job.snapshot()))
        return result

    monkeypatch.setattr(engine, "generate", generate)
    return calls


def test_lanczos_upscale_repaints_every_tile_and_saves_one_picture(engine: Engine, monkeypatch) -> None:
    calls = spy(engine, monkeypatch)
    init = picture(48, 40)
    result = engine.generate(request(init, ["", 16, 1, 2]))  # index 1: Lanczos, as /sdapi/v1/upscalers lists it
    assert result.images[0].size == (96, 80) and not result.interrupted
    tiles = tile_count(96, 80, 64, 16)
    assert len(calls) == tiles == 4
    assert [c[0].seed for c in calls] == [9, 10, 11, 12]  # A1111: one seed on per tile
    assert all((c[0].width, c[0].height, c[0].init_image.size) == (64, 64, (64, 64)) for c in calls)
    assert all(c[0].denoising_strength == 0.5 and not c[0].save for c in calls)
    fields = parse_infotext(result.infotexts[0])
    assert fields["Script"] == "SD upscale" and fields["SD upscale upscaler"] == "Lanczos"
    assert (fields["SD upscale overlap"], fields["Size"], fields["Seed"]) == ("16", "64x64", "9")
    assert fields["Denoising strength"] == "0.5" and result.seeds == [9]
    saved = sorted((engine.outputs_dir / "img2img-images").rglob("*.png"))
    assert saved == result.paths and len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (96, 80) and "Script: SD upscale" in image.info["parameters"]
    lanczos = init.resize((96, 80), Image.Resampling.LANCZOS)
    assert result.images[0].tobytes() != lanczos.tobytes()  # the tiles were repainted
    # progress: the upscale is part 1 of 5, tile k part k + 2; steps add up and the bar never runs backwards
    assert [c[1].batch_index for c in calls] == [1, 2, 3, 4] and {c[1].batch_total for c in calls} == {5}
    fractions = [c[1].fraction for c in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == pytest.approx(0.4)


def test_model_upscaler_by_name_batches_and_none(engine: Engine, monkeypatch) -> None:
    calls = spy(engine, monkeypatch)
    model = engine.generate(request(picture(44, 44), ["", 8, "TINY-COMPACT-2X", 1.5], batch_size=2, batch_count=2))
    assert [im.size for im in model.images] == [(64, 64), (64, 64)]  # 66 rounded down to a multiple of 8
    assert [c[0].seed for c in calls] == [9, 10]  # one tile per upscale; the second upscale starts one on
    assert model.seeds == [9, 10] and parse_infotext(model.infotexts[1])["SD upscale upscaler"] == "tiny-compact-2x"
    calls.clear()
    engine.generate(request(picture(120, 64), ["", 16, 1, 1], batch_size=2, save=False))  # 3 tiles
    assert [c[0].seed for c in calls] == [9, 10, 10]  # A1111's batches of 2: seeds 9, 10 then 10
    calls.clear()
    kept = engine.generate(request(picture(72, 64), ["", 0, "None", 3], save=False))
    assert kept.images[0].size == (72, 64) and len(calls) == 2  # "None": repainted at its own size, no upscale


def test_interrupt_stops_between_tiles(engine: Engine, monkeypatch) -> None:
    calls = spy(engine, monkeypatch)
    real = engine.generate

    def interrupting(inner: GenerationRequest, job: Any = None) -> Any:
        result = real(inner, job)
        if inner.script is None and len(calls) == 2:
            job.interrupt()
        return result

    monkeypatch.setattr(engine, "generate", interrupting)
    result = engine.generate(request(picture(48, 40), ["", 16, "Lanczos", 2]))
    assert result.interrupted and not result.images and len(calls) == 2
    assert not list((engine.outputs_dir / "img2img-images").rglob("*.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", 16, 99, 2], "upscaler index 99 is out of range"),
        (["", 16, "R-ESRGAN 4x+", 2], "unknown upscaler 'R-ESRGAN 4x\\+'"),
        (["", 16, 1, 0.5], "scale factor must be between 1 and 8"),
        (["", 16, 1, "big"], "scale factor must be a number"),
        (["", -8, 1, 2], "tile overlap must be between 0 and 1024"),
        (["", 16.5, 1, 2], "tile overlap must be a whole number"),
        (["", 16, 1, 2, "extra"], "takes 4 args, got 5"),
    ],
)
def test_bad_args_are_clear(engine: Engine, args: list[Any], message: str) -> None:
    with pytest.raises(EaselError, match=message):
        engine.generate(request(picture(48, 40), args))


def test_only_img2img_tiles_the_vae_can_take_and_a1111_defaults(engine: Engine) -> None:
    with pytest.raises(EaselError, match="script 'SD upscale' not found for txt2img"):
        engine.generate(request(picture(48, 40), [], mode="txt2img", init_image=None))
    with pytest.raises(EaselError, match="Width must be a multiple of 8"):
        engine.generate(request(picture(48, 40), ["", 16, 1, 2], width=100))
    defaults = engine.generate(request(picture(72, 64), [], save=False, steps=1))  # A1111's defaults: None, 64, 2x
    assert defaults.images[0].size == (72, 64)
    with pytest.raises(EaselError, match="the upscaled picture would be 40x40; at least 64x64"):
        engine.generate(request(picture(40, 40), []))
