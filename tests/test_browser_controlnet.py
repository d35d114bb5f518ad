"""The ControlNet accordion in a browser: upload a control image, enable a unit, pick preprocessor and model,
preview the map, generate, and see the unit in the result's infotext (and the image differ from one without)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import browser_page, set_number
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_controlnet import control_picture
from tests.test_controlnet_api import write_controlnets

pytestmark = pytest.mark.app
SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "screenshots"


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("controlnet-ui", prepare=lambda models: write_controlnets(models, tiny)) as s:
        yield s


def _pick(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def _infotext(page) -> str:
    return page.evaluate("() => document.querySelector('#txt2img_info textarea')?.value || ''")


def test_a_unit_from_the_accordion_guides_txt2img(server: LaunchedServer, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    picture = tmp_path / "control.png"
    control_picture(128).save(picture)
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        set_number(page, "txt2img_steps", 3)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        set_number(page, "txt2img_seed", 11)
        page.click("#txt2img_controlnet_accordion")
        page.set_input_files("#txt2img_controlnet_unit0_image input[type=file]", str(picture))
        page.wait_for_selector("#txt2img_controlnet_unit0_image img")
        _pick(page, "txt2img_controlnet_unit0_module", "canny")
        _pick(page, "txt2img_controlnet_unit0_model", "control_tiny_sd15_canny")
        page.click("#txt2img_controlnet_unit0_run_preview")
        page.wait_for_selector("#txt2img_controlnet_unit0_preview img", timeout=60_000)
        page.click("#txt2img_generate")  # not enabled yet: no ControlNet
        page.wait_for_function(
            "() => (document.querySelector('#txt2img_info textarea')?.value || '').includes('Seed: 11')",
            timeout=60_000,
        )
        assert "ControlNet 0" not in _infotext(page)
        page.click("#txt2img_controlnet_unit0_enabled input")
        page.wait_for_timeout(500)  # the unit's value reaches the tab's request on the checkbox's change event
        page.click("#txt2img_generate")
        page.wait_for_function(
            "() => (document.querySelector('#txt2img_info textarea')?.value || '').includes('ControlNet 0')",
            timeout=60_000,
        )
        info = _infotext(page)
        assert 'ControlNet 0: "Module: canny, Model: control_tiny_sd15_canny [' in info
        page.screenshot(path=str(SCREENSHOTS / "controlnet_accordion.png"), full_page=True)


def test_control_type_narrows_the_lists(server: LaunchedServer, tmp_path: Path) -> None:
    """Picking "Tile" (as in sd-webui-controlnet) offers the tile preprocessors and models only, its defaults picked."""
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        page.click("#txt2img_controlnet_accordion")
        unit = "#txt2img_controlnet_unit0"
        page.locator(f"{unit}_control_type").get_by_label("Tile", exact=True).check()
        page.wait_for_function(
            f"() => document.querySelector('{unit}_module input')?.value === 'tile_resample'", timeout=30_000
        )
        assert page.locator(f"{unit}_model input").input_value() == "control_tiny_sd15_tile"
        page.locator(f"{unit}_module input").click()
        offered = page.get_by_role("option").all_inner_texts()
        page.keyboard.press("Escape")
        assert [o.replace("✓", "").strip() for o in offered] == ["none", "tile_resample", "blur_gaussian"]
        page.locator(f"{unit}_control_type").screenshot(path=str(SCREENSHOTS / "controlnet_control_type.png"))
