"""ControlNet's weight-free preprocessors added for issue 12 (shuffle, lineart_standard, inpaint, inpaint_only) on a
photo-like picture, their module_list entries, the unit's mask, and inpaint_only keeping the picture outside it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from pipelines.errors import EaselError
from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, load_extensions
from pipelines.extensions.state import ExtensionState
from pipelines.generate import Engine
from tests.api_support import b64, decode
from tests.test_controlnet import builtins, cn_dir, diff, engine, pixels, request, unit  # noqa: F401  (fixtures)


def photo(width: int = 128, height: int = 96) -> Image.Image:
    """A photo-like picture: a sky gradient over a ground gradient, a dark disc, a light house, a dark pole."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 80 * y / height, 140 + 60 * y / height, 230 - 20 * y / height], axis=2)
    ground = np.stack([60 + 50 * x / width, 120 + 40 * x / width, 40 + 0 * x], axis=2)
    array = np.where((y > height * 0.6)[..., None], ground, sky).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, 42, 40), fill=(40, 35, 50))
    draw.rectangle((70, 30, 110, 62), fill=(235, 225, 200))
    draw.line((56, 5, 60, 90), fill=(20, 20, 20), width=3)
    return image


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@pytest.fixture
def modules() -> Iterator[dict[str, Any]]:
    """The extension's modules as the loader imports them."""
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    names = ("preprocessors", "masking", "units", "api", "control")
    yield {n: importlib.import_module(MODULE_PREFIX + "controlnet." + n) for n in names}
    extensions.unload()


def test_shuffle_warps_the_picture_smoothly_and_reproducibly(modules: dict[str, Any]) -> None:
    pre = modules["preprocessors"]
    picture = photo()
    out = np.asarray(pre.run("shuffle", picture, 96, -1, -1, seed=5))
    assert out.shape == (96, 128, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(pre.run("shuffle", picture, 96, -1, -1, seed=5)))  # seeded
    other = np.asarray(pre.run("shuffle", picture, 96, -1, -1, seed=6))
    source = np.asarray(picture, dtype=np.int16)
    assert diff(out, other) > 5 and diff(out, source) > 5  # another seed, another warp; not the picture itself
    # every pixel is a blend of the picture's pixels: its colours, within its range, not noise
    assert out.min() >= source.min() and out.max() <= source.max()
    step = np.abs(np.diff(out.astype(np.int16), axis=1)).mean()
    noise = np.abs(np.diff(np.random.default_rng(0).permutation(source.reshape(-1, 3)).reshape(source.shape), axis=1))
    assert step < noise.mean() / 4  # a smooth warp keeps neighbours together; shuffled pixels would not
    larger = np.asarray(pre.run("shuffle", picture, 192, -1, -1, seed=5))
    assert larger.shape == (192, 256, 3)  # the processor resolution is the short side


def test_lineart_standard_finds_dark_lines_on_light_ground(modules: dict[str, Any]) -> None:
    pre = modules["preprocessors"]
    out = np.asarray(pre.run("lineart_standard", photo(), 96, -1, -1))
    assert out.shape == (96, 128, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    lines = out[..., 0]
    assert lines[20:80, 56:61].mean() > 100  # the dark pole is a bright line
    assert lines[40:52, 80:100].max() == 0  # inside the light house: nothing
    assert lines[80:96, 100:120].max() < 10  # the smooth ground gradient, away from the horizon: (almost) nothing
    assert 0.02 < (lines > 64).mean() < 0.3  # lines, not regions
    drawing = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(drawing).line((0, 32, 63, 32), fill=(0, 0, 0), width=2)
    drawn = np.asarray(pre.run("lineart_standard (from white bg & black line)", drawing, 64, -1, -1))[..., 0]
    line_rows = np.flatnonzero(drawn.min(axis=1) > 100)  # the typical line lands at half brightness (127)
    assert 1 <= len(line_rows) <= 3 and abs(line_rows.mean() - 32.5) <= 1 and drawn[:20].max() == 0  # the alias


def test_inpaint_hint_marks_the_masked_pixels_minus_one(modules: dict[str, Any]) -> None:
    pre, masking = modules["preprocessors"], modules["masking"]
    picture = photo()
    mask = box_mask(picture.size, (64, 16, 112, 64))
    for name in ("inpaint", "inpaint_only", "inpaint_global_harmonious"):
        detected = pre.run(name, picture, 512, -1, -1, mask)
        assert detected.mode == "RGBA" and detected.size == picture.size  # no resolution: the picture's size
        assert np.array_equal(np.asarray(detected)[..., 3], np.asarray(mask))
        assert np.array_equal(np.asarray(detected)[..., :3], np.asarray(picture))
    hint = masking.hint_array(detected, 128, 96, 0)
    assert hint.shape == (96, 128, 3) and hint.dtype == np.float32
    masked = np.asarray(mask) > 0
    assert np.all(hint[masked] == -1.0)
    assert np.allclose(hint[~masked], np.asarray(picture, dtype=np.float32)[~masked] / 255.0)
    square = masking.hint_array(detected, 64, 64, 1)  # crop and resize: the mask stays on the picture's pixels
    assert square.shape == (64, 64, 3) and (square == -1).all(axis=2).mean() == pytest.approx(0.25, abs=0.05)
    shown = np.asarray(masking.preview(detected))  # the UI's preview: the masked pixels black
    assert shown.shape == (96, 128, 3) and not shown[masked].any()
    assert np.array_equal(shown[~masked], np.asarray(picture)[~masked])
    nothing = pre.run("inpaint", picture, 512, -1, -1)  # no mask: nothing to repaint
    assert np.asarray(nothing)[..., 3].max() == 0 and masking.hint_array(nothing, 128, 96, 0).min() >= 0


def test_module_list_and_detail_name_the_new_preprocessors(modules: dict[str, Any]) -> None:
    api = modules["api"]
    runtime = modules["control"].ControlNetRuntime(lambda: [], lambda: False, 3)
    app = FastAPI()
    app.include_router(api.build_router(runtime), prefix="/controlnet")
    client = TestClient(app)
    listing = client.get("/controlnet/module_list").json()
    assert {"shuffle", "lineart_standard", "inpaint", "inpaint_only"} <= set(listing["module_list"])
    detail = listing["module_detail"]
    assert detail["shuffle"] == {
        "model_free": False,
        "sliders": [{"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 1}],
    }
    assert detail["lineart_standard"]["sliders"][0]["name"] == "Resolution"
    assert detail["inpaint"] == {"model_free": False, "sliders": []}
    assert detail["inpaint_only"] == {"model_free": False, "sliders": []}
    fidelity = {"name": 'Style Fidelity (only for "Balanced" mode)', "value": 0.5, "min": 0, "max": 1, "step": 0.01}
    for name in ("reference_only", "reference_adain", "reference_adain+attn"):
        assert detail[name] == {"model_free": True, "sliders": [fidelity]}, name
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Reference"]["model_list"] == ["None"] and types["Reference"]["default_option"] == "reference_only"
    assert types["Inpaint"]["default_option"] == "inpaint_only" and "inpaint" in types["Inpaint"]["module_list"]
    assert types["Shuffle"]["default_option"] == "shuffle" and types["Lineart"]["default_option"] == "lineart_standard"
    picture = photo()
    body = {
        "controlnet_module": "inpaint_only",
        "controlnet_input_images": [b64(picture)],
        "controlnet_masks": [b64(box_mask(picture.size, (0, 0, 32, 32)))],
    }
    detected = decode(client.post("/controlnet/detect", json=body).json()["images"][0])
    assert detected.mode == "RGBA" and np.asarray(detected)[:32, :32, 3].min() == 255
    assert np.asarray(detected)[40:, 40:, 3].max() == 0


def test_unit_mask_fields(modules: dict[str, Any]) -> None:
    units = modules["units"]
    picture = photo(64, 64)
    mask = box_mask((64, 64), (8, 8, 24, 24))
    base = {"model": "m", "module": "inpaint", "image": b64(picture)}
    for key in ("mask", "mask_image"):
        parsed = units.parse_unit({**base, key: b64(mask)}, 0)
        assert np.array_equal(np.asarray(parsed.mask), np.asarray(mask)), key
    nested = units.parse_unit({**base, "image": {"image": b64(picture), "mask": b64(mask.convert("RGB"))}}, 0)
    assert np.array_equal(np.asarray(nested.mask), np.asarray(mask))
    assert units.parse_unit({**base, "mask": b64(Image.new("L", (64, 64), 0))}, 0).mask is None  # black: no mask
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    transparent.paste((255, 0, 0, 255), (8, 8, 24, 24))  # strokes on a transparent sheet
    assert np.array_equal(np.asarray(units.parse_unit({**base, "mask": b64(transparent)}, 0).mask), np.asarray(mask))
    with pytest.raises(EaselError, match="never as a path on the server"):
        units.parse_unit({**base, "mask": "/etc/hostname.png"}, 0)
    with pytest.raises(EaselError, match="mask"):
        units.parse_unit({**base, "mask_image": 5}, 0)


def test_inpaint_unit_in_txt2img_gets_its_mask(engine: Engine) -> None:  # noqa: F811
    picture = photo(64, 64)
    mask = box_mask((64, 64), (16, 16, 48, 48))
    unmasked = pixels(engine, request(unit(module="inpaint", image=picture, weight=2.0)))
    masked = pixels(engine, request(unit(module="inpaint", image=picture, mask=b64(mask), weight=2.0)))
    assert diff(unmasked, masked) > 0.05  # the -1 pixels reach the ControlNet
    result = engine.generate(request(unit(module="inpaint_global_harmonious", image=picture, mask=b64(mask))))
    assert 'ControlNet 0: "Module: inpaint, Model: tiny-sd1-ldm' in result.infotexts[0]


def test_inpaint_only_in_txt2img_keeps_the_picture_outside_the_unit_mask(engine: Engine) -> None:  # noqa: F811
    picture = photo(64, 64)
    mask = box_mask((64, 64), (16, 16, 48, 48))
    kept = pixels(engine, request(unit(module="inpaint_only", image=picture, mask=b64(mask))))
    source = np.asarray(picture, dtype=np.int16)
    ring = np.ones((64, 64), dtype=bool)
    ring[8:56, 8:56] = False  # beyond the 7-px grown, feathered edge: the control picture, exactly
    assert np.array_equal(kept[ring], source[ring])
    inside = (slice(24, 40), slice(24, 40))
    assert diff(kept[inside], source[inside]) > 10  # the masked area is generated
    half = pixels(engine, request(unit(module="inpaint_only", image=picture, mask=b64(mask), weight=0.5)))
    assert np.array_equal(half[ring], source[ring]) and diff(half[inside], kept[inside]) > 0.5  # weight: latents
    unmasked = pixels(engine, request(unit(module="inpaint_only", image=picture)))  # no mask: nothing kept
    assert diff(unmasked[ring], source[ring]) > 10  # that area is then whatever the model made


def test_inpaint_only_in_img2img_and_in_the_inpaint_tab(engine: Engine) -> None:  # noqa: F811
    picture = photo(64, 64)
    mask = box_mask((64, 64), (16, 16, 48, 48))
    source = np.asarray(picture, dtype=np.int16)
    ring = np.ones((64, 64), dtype=bool)
    ring[8:56, 8:56] = False
    img2img = {"mode": "img2img", "init_image": picture, "denoising_strength": 0.8}
    kept = pixels(engine, request(unit(module="inpaint_only", image=None, mask=b64(mask)), **img2img))
    assert np.array_equal(kept[ring], source[ring])
    inpaint = {**img2img, "mode": "inpaint", "mask": mask, "mask_blur": 0}
    tab_only = pixels(engine, request(**inpaint))
    with_unit = pixels(engine, request(unit(module="inpaint_only", image=None), **inpaint))
    outside = np.asarray(mask) == 0
    assert np.array_equal(with_unit[outside], source[outside])  # the tab keeps it, by its own mask
    assert diff(with_unit, tab_only) > 0.05  # and the unit's hint (the tab's mask as -1) changed the inside
