"""Model upscalers end to end: the hires fix through Engine.generate, the API through webuiapi, the Extras tab, and
the SD upscale script through ``/sdapi/v1/img2img`` and the img2img tab's Script dropdown."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import webuiapi
from PIL import Image

from pipelines.generate import Engine
from pipelines.metadata.infotext import parse_infotext
from pipelines.requests import GenerationRequest
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary
from tests.api_support import b64, decode, picture_and_mask
from tests.browser import browser_page, set_number
from tests.server import LaunchedServer
from tests.upscaler_models import add_upscalers
from webui.cli import parse_args

TIMEOUT = 120
SCREENSHOTS = Path(os.environ.get("EASEL_SCREENSHOTS", "/tmp/easel-screenshots"))


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_hires_fix_with_a_model_upscaler_through_engine_generate(
    make_engine: Callable[[Path], Engine], tmp_path: Path
) -> None:
    engine = make_engine(tmp_path / "outputs")
    add_upscalers(tmp_path / "models")
    engine.upscalers = UpscalerLibrary(UpscalerFolders.from_models_dir(tmp_path / "models"), tile=32, tile_overlap=8)
    base = {"prompt": "a lighthouse", "seed": 3, "steps": 2, "width": 64, "height": 64, "save": False}
    hires = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5}
    model = engine.generate(GenerationRequest(**base, **hires, hr_upscaler="tiny-compact-2x"))
    lanczos = engine.generate(GenerationRequest(**base, **hires, hr_upscaler="Lanczos"))
    assert model.images[0].size == (128, 128)
    assert parse_infotext(model.infotexts[0])["Hires upscaler"] == "tiny-compact-2x"
    assert model.images[0].tobytes() != lanczos.images[0].tobytes()  # the model's picture went into the second pass
    with pytest.raises(Exception, match="unknown hires upscaler 'R-ESRGAN 4x\\+'"):
        engine.generate(GenerationRequest(**base, **hires, hr_upscaler="R-ESRGAN 4x+"))


def test_server_folders_are_refused_under_listen_unless_allowed() -> None:
    assert parse_args([]).server_folders_allowed
    assert not parse_args(["--listen", "--insecure-no-auth"]).server_folders_allowed
    assert parse_args(["--listen", "--insecure-no-auth", "--allow-server-folders"]).server_folders_allowed
    flags = parse_args(["--esrgan-models-path", "/srv/esrgan", "--hat-models-path", "/srv/hat"])
    assert (flags.esrgan_models_path, flags.hat_models_path) == (Path("/srv/esrgan"), Path("/srv/hat"))


@pytest.fixture(scope="module")
def server(launch) -> Iterator[LaunchedServer]:
    with launch("upscalers", prepare=add_upscalers) as running:
        yield running


@pytest.mark.app
def test_api_lists_and_uses_model_upscalers(server: LaunchedServer) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")
    listed = {u["name"]: u for u in api.get_upscalers()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert listed["tiny-esrgan-4x"]["model_name"] == "ESRGAN" and listed["tiny-compact-2x"]["scale"] == 2
    assert listed["tiny-compact-2x-st"]["model_path"].endswith("tiny-compact-2x-st.safetensors")
    picture, _ = picture_and_mask(32)
    result = api.extra_single_image(picture, upscaler_1="tiny-compact-2x", upscaling_resize=2)
    assert result.image.size == (64, 64)
    assert "Postprocess upscaler: tiny-compact-2x" in result.info
    blended = api.extra_single_image(
        picture, upscaler_1="tiny-esrgan-4x", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.3, upscaling_resize=3
    )
    assert blended.image.size == (96, 96)
    batch = api.extra_batch_images([picture, picture.resize((24, 16))], upscaler_1="tiny-compact-2x-st")
    assert [im.size for im in batch.images] == [(64, 64), (48, 32)]
    bad = requests.post(
        f"{server.url}/sdapi/v1/extra-single-image",
        json={"image": webuiapi.raw_b64_img(picture), "upscaler_1": "R-ESRGAN 4x+"},
        timeout=TIMEOUT,
    )
    assert bad.status_code == 422 and "unknown upscaler 'R-ESRGAN 4x+'" in bad.text
    options = api.get_options()
    assert (options["ESRGAN_tile"], options["ESRGAN_tile_overlap"]) == (192, 8)
    assert {m["name"] for m in requests.get(f"{server.url}/sdapi/v1/latent-upscale-modes", timeout=30).json()} >= {
        "Latent",
        "Latent (nearest-exact)",
    }


@pytest.mark.browser
def test_extras_tab_upscales_saves_and_sends_to_img2img(server: LaunchedServer, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    picture, _ = picture_and_mask(48)
    picture.save(source)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = set(server.outputs.glob("extras-images/*/*.png"))
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url)
        page.get_by_role("tab", name="Extras", exact=True).click()
        page.locator("#extras_image input[type=file]").set_input_files(str(source))
        page.locator("#extras_image img").first.wait_for(timeout=30_000)
        set_number(page, "extras_by", 2)
        _pick(page, "extras_upscaler_1", "tiny-compact-2x")
        page.locator("#extras_generate").click()
        page.locator("#extras_gallery img").first.wait_for(state="visible", timeout=60_000)
        info = page.locator("#extras_info textarea")
        page.wait_for_function("el => el.value.includes('tiny-compact-2x')", arg=info.element_handle(), timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "extras_tab.png"), full_page=True)
        assert "Postprocess upscale by: 2" in info.input_value()
        page.get_by_role("tab", name="Batch from Directory").click()
        page.locator("#extras_folder input, #extras_folder textarea").first.wait_for(timeout=10_000)
        page.screenshot(path=str(SCREENSHOTS / "extras_folder.png"))
        page.get_by_role("tab", name="Single Image").click()
        page.locator("#extras_send_to_img2img").click()
        page.locator("#img2img_image img").first.wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "extras_sent_to_img2img.png"))
    saved = sorted(set(server.outputs.glob("extras-images/*/*.png")) - before)
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (96, 96)
        assert "Postprocess upscaler: tiny-compact-2x" in image.info["extras"]


@pytest.mark.app
def test_sd_upscale_through_the_api_with_a1111_args(server: LaunchedServer) -> None:
    api = f"{server.url}/sdapi/v1"
    scripts = requests.get(f"{api}/scripts", timeout=30).json()
    assert "sd upscale" in scripts["img2img"] and "sd upscale" not in scripts["txt2img"]
    info = requests.get(f"{api}/script-info", timeout=30).json()
    entry = next(i for i in info if i["name"] == "sd upscale")
    assert entry["is_img2img"] and not any(i["name"] == "sd upscale" and not i["is_img2img"] for i in info)
    assert [a["label"] for a in entry["args"]] == ["Info", "Tile overlap", "Upscaler", "Scale Factor"]
    upscalers = [u["name"] for u in requests.get(f"{api}/upscalers", timeout=30).json()]
    assert entry["args"][2]["choices"] == upscalers and entry["args"][3]["value"] == 2.0
    picture, _ = picture_and_mask(40)
    body = {
        "init_images": [b64(picture)],
        "prompt": "a harbour",
        "steps": 2,
        "denoising_strength": 0.4,
        "width": 64,
        "height": 64,
        "seed": 31,
        "save_images": True,
        "script_name": "SD upscale",
        "script_args": ["", 16, upscalers.index("tiny-compact-2x"), 2],
    }
    before = set(server.outputs.glob("img2img-images/*/*.png"))
    reply = requests.post(f"{api}/img2img", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    images = [decode(i) for i in reply.json()["images"]]
    assert [im.size for im in images] == [(80, 80)]
    fields = parse_infotext(json.loads(reply.json()["info"])["infotexts"][0])
    assert (fields["Script"], fields["SD upscale upscaler"], fields["SD upscale overlap"]) == (
        "SD upscale",
        "tiny-compact-2x",
        "16",
    )
    saved = sorted(set(server.outputs.glob("img2img-images/*/*.png")) - before)
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (80, 80) and "SD upscale upscaler: tiny-compact-2x" in image.info["parameters"]
    for args, message in (
        (["", 16, 99, 2], "upscaler index 99 is out of range"),
        (["", 16, "Lanczos", 9], "scale factor must be between 1 and 8"),
        (["", "wide", "Lanczos", 2], "tile overlap must be a whole number"),
    ):
        bad = requests.post(f"{api}/img2img", json=body | {"script_args": args}, timeout=60)
        assert bad.status_code == 422 and message in bad.text, bad.text
    assert requests.get(f"{api}/progress", timeout=30).status_code == 200  # still serving


@pytest.mark.browser
def test_sd_upscale_from_the_img2img_script_dropdown(server: LaunchedServer, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    picture, _ = picture_and_mask(48)
    picture.save(source)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = set(server.outputs.glob("img2img-images/*/*.png"))
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url)
        page.get_by_role("tab", name="img2img", exact=True).click()
        page.locator("#img2img_image input[type=file]").set_input_files(str(source))
        page.locator("#img2img_image img").first.wait_for(timeout=30_000)
        set_number(page, "img2img_steps", 2)
        set_number(page, "img2img_width", 64)
        set_number(page, "img2img_height", 64)
        _pick(page, "img2img_script", "SD upscale")
        page.locator("#img2img_sd_upscale_info").wait_for(state="visible", timeout=10_000)
        set_number(page, "img2img_sd_upscale_overlap", 16)
        page.locator("#img2img_sd_upscale_upscaler_index").get_by_label("Lanczos", exact=True).check()
        page.screenshot(path=str(SCREENSHOTS / "sd_upscale_controls.png"), full_page=True)
        page.locator("#img2img_generate").click()
        page.wait_for_function(
            "() => (document.querySelector('#img2img_info textarea')?.value || '').includes('SD upscale')",
            timeout=300_000,
        )
        text = page.input_value("#img2img_info textarea")
        assert "SD upscale upscaler: Lanczos" in text and "SD upscale overlap: 16" in text
        page.screenshot(path=str(SCREENSHOTS / "sd_upscale_result.png"), full_page=True)
    saved = sorted(set(server.outputs.glob("img2img-images/*/*.png")) - before)
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (96, 96)
