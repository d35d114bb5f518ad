"""ControlNet units back from an image: a unit generated through the API, its PNG read by ``/sdapi/v1/png-info``
(sd-webui-controlnet's ``ControlNet N <field>`` keys) and by the PNG Info tab, whose "Send to txt2img" fills the
unit's widgets; and the unit count as a setting: from config.json at start-up, shown in Settings, and used."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from pipelines.metadata.infotext import read_image_parameters
from tests.api_support import b64
from tests.browser import browser_page
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_controlnet import control_picture
from tests.test_controlnet_api import write_controlnets

pytestmark = pytest.mark.app
SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "screenshots"
UNIT = {
    "module": "canny",
    "model": "control_tiny_sd15_tile",
    "weight": 0.65,
    "resize_mode": "Just Resize",
    "processor_res": 256,
    "threshold_a": 60,
    "threshold_b": 150,
    "guidance_start": 0.1,
    "guidance_end": 0.85,
    "pixel_perfect": True,
    "control_mode": "ControlNet is more important",
    "hr_option": "Low res only",
}


def _prepare(models: Path, tiny: TinyModels) -> None:
    write_controlnets(models, tiny)
    (models.parent / "config.json").write_text(json.dumps({"control_net_unit_count": 4}))  # as A1111 keeps it


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("controlnet-paste", prepare=lambda models: _prepare(models, tiny)) as s:
        yield s


@pytest.fixture(scope="module")
def png(server: LaunchedServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image made with unit 1 set (unit 0 left off), as the API returns it: a PNG carrying its infotext."""
    body: dict[str, Any] = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64}
    body["alwayson_scripts"] = {"controlnet": {"args": [{"enabled": False}, {**UNIT, "image": b64(control_picture())}]}}
    answer = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    path = tmp_path_factory.mktemp("paste") / "controlnet.png"
    path.write_bytes(base64.b64decode(answer.json()["images"][0]))
    return path


def test_unit_count_comes_from_config_json(server: LaunchedServer) -> None:
    settings = requests.get(f"{server.url}/controlnet/settings", timeout=30).json()
    assert settings == {"control_net_unit_count": 4, "control_net_max_models_num": 4}


def test_png_info_api_returns_the_unit(server: LaunchedServer, png: Path) -> None:
    body = {"image": base64.b64encode(png.read_bytes()).decode("ascii")}
    parameters = requests.post(f"{server.url}/sdapi/v1/png-info", json=body, timeout=60).json()["parameters"]
    assert parameters["ControlNet 1"].startswith("Module: canny, Model: control_tiny_sd15_tile [")
    unit = {k.removeprefix("ControlNet 1 "): v for k, v in parameters.items() if k.startswith("ControlNet 1 ")}
    assert unit == {**UNIT, "enabled": True}
    assert not any(k.startswith("ControlNet 0") for k in parameters)


def _value(page: Any, selector: str) -> str:
    return page.locator(selector).first.input_value()


def _checked_radio(page: Any, elem_id: str) -> str:
    return page.evaluate(f"() => document.querySelector('#{elem_id} input:checked')?.value || ''")


def test_png_info_send_to_txt2img_fills_the_unit(server: LaunchedServer, png: Path, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    unit = "#txt2img_controlnet_unit1"
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        page.get_by_role("tab", name="Settings").click()
        count = page.locator("#setting_control_net_unit_count")
        count.wait_for(timeout=30_000)
        assert count.locator("input[type=number]").first.input_value() == "4"
        assert "requires restart" in count.inner_text()
        count.scroll_into_view_if_needed()
        page.locator("#settings_section_controlnet").first.screenshot(path=str(SCREENSHOTS / "controlnet_settings.png"))

        page.get_by_role("tab", name="PNG Info").click()
        page.set_input_files("#png_info_image input[type=file]", str(png))
        text = page.locator("#png_info_text textarea")
        page.wait_for_function("el => el.value.includes('ControlNet 1')", arg=text.element_handle(), timeout=30_000)
        page.click("#png_info_send_txt2img")
        prompt = page.locator("#txt2img_prompt textarea")
        page.wait_for_function("el => el.value.includes('lighthouse')", arg=prompt.element_handle(), timeout=30_000)
        page.click("#txt2img_controlnet_accordion")
        last = page.get_by_role("tab", name="ControlNet Unit 3")
        last.wait_for(state="attached", timeout=30_000)  # the accordion's content renders once it is open
        assert last.count() == 1  # four units, as config.json says
        page.get_by_role("tab", name="ControlNet Unit 1").click()
        page.locator(f"{unit}_enabled input").wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # the unit's change events settle (the threshold ranges follow the module)
        assert page.locator(f"{unit}_enabled input").is_checked()
        assert _value(page, f"{unit}_module input") == "canny"
        assert _value(page, f"{unit}_model input") == "control_tiny_sd15_tile"
        assert _value(page, f"{unit}_weight input[type=number]") == "0.65"
        assert _value(page, f"{unit}_start input[type=number]") == "0.1"
        assert _value(page, f"{unit}_end input[type=number]") == "0.85"
        assert _value(page, f"{unit}_res input[type=number]") == "256"
        assert _value(page, f"{unit}_threshold_a input[type=number]") == "60"  # not reset to canny's default
        assert _value(page, f"{unit}_threshold_b input[type=number]") == "150"
        assert page.locator(f"{unit}_pixel_perfect input").is_checked()
        assert _checked_radio(page, "txt2img_controlnet_unit1_mode") == "ControlNet is more important"
        assert _checked_radio(page, "txt2img_controlnet_unit1_resize_mode") == "Just Resize"
        assert _checked_radio(page, "txt2img_controlnet_unit1_hr_option") == "Low res only"
        page.locator("#txt2img_controlnet_accordion").screenshot(path=str(SCREENSHOTS / "controlnet_pasted.png"))
        page.get_by_role("tab", name="ControlNet Unit 0").click()
        page.locator("#txt2img_controlnet_unit0_enabled input").wait_for(timeout=30_000)
        assert not page.locator("#txt2img_controlnet_unit0_enabled input").is_checked()  # not in the text: as it was

        # the prompt box's "read parameters" button does the same, here in img2img
        with Image.open(png) as image:
            infotext = read_image_parameters(image)
        page.get_by_role("tab", name="img2img", exact=True).click()
        page.locator("#img2img_prompt textarea").fill(infotext or "")
        page.click("#img2img_read_parameters")
        steps = page.locator("#img2img_steps input[type=number]").first
        page.wait_for_function("el => el.value === '3'", arg=steps.element_handle(), timeout=30_000)  # it was read
        page.wait_for_timeout(500)  # the layout settles after the update
        page.click("#img2img_controlnet_accordion")
        page.locator("#img2img_controlnet_units").get_by_role("tab", name="ControlNet Unit 1").click()
        enabled = page.locator("#img2img_controlnet_unit1_enabled input")
        page.wait_for_function("el => el.checked", arg=enabled.element_handle(), timeout=30_000)
        assert _value(page, "#img2img_controlnet_unit1_weight input[type=number]") == "0.65"
        assert _value(page, "#img2img_controlnet_unit1_model input") == "control_tiny_sd15_tile"
