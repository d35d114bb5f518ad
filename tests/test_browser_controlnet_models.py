"""ControlNet-Union and T2I-Adapter files in a browser: the unit's model dropdown lists them with the ControlNets, and
a T2I-Adapter picked there runs in txt2img (its unit in the result's infotext); over the API the same, and a union
model for another architecture is a 422 naming both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pipelines.metadata.infotext import parse_infotext
from pipelines.models.tiny_adapters import build_tiny_t2i_adapter, build_tiny_union, save_adapter_file, save_tensors
from tests.api_support import b64
from tests.browser import browser_page, set_number
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_browser_controlnet import SCREENSHOTS, _infotext, _pick
from tests.test_controlnet import control_picture
from tests.test_controlnet_api import write_controlnets

pytestmark = pytest.mark.app
NEW_MODELS = ("t2i-adapter_tiny_sd15_canny", "controlnet-union-tiny-sdxl-promax")


def write_models(models: Path, tiny: TinyModels) -> None:
    write_controlnets(models, tiny)
    folder = models / "ControlNet"
    adapter = build_tiny_t2i_adapter(tiny.components("sd1")["unet"], seed=2, in_channels=1)
    save_adapter_file(adapter, folder / f"{NEW_MODELS[0]}.safetensors")
    union = build_tiny_union(tiny.components("sdxl")["unet"], seed=4)
    save_tensors(dict(union.state_dict()), folder / f"{NEW_MODELS[1]}.safetensors")


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("controlnet-models-ui", prepare=lambda models: write_models(models, tiny)) as s:
        yield s


def test_adapters_in_the_model_dropdown_and_a_t2i_unit_guides_txt2img(server: LaunchedServer, tmp_path: Path) -> None:
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
        page.locator("#txt2img_controlnet_unit0_model input").click()
        options = page.get_by_role("option").all_inner_texts()
        names = [o.strip() for o in options]
        assert all(name in names for name in (*NEW_MODELS, "control_tiny_sd15_canny")), names
        page.screenshot(path=str(SCREENSHOTS / "controlnet_models_dropdown.png"), full_page=False)
        page.keyboard.press("Escape")
        page.set_input_files("#txt2img_controlnet_unit0_image input[type=file]", str(picture))
        page.wait_for_selector("#txt2img_controlnet_unit0_image img")
        _pick(page, "txt2img_controlnet_unit0_module", "canny")
        _pick(page, "txt2img_controlnet_unit0_model", NEW_MODELS[0])
        page.click("#txt2img_controlnet_unit0_enabled input")
        page.wait_for_timeout(500)  # the unit's value reaches the tab's request on the checkbox's change event
        page.click("#txt2img_generate")
        page.wait_for_function(
            "() => (document.querySelector('#txt2img_info textarea')?.value || '').includes('ControlNet 0')",
            timeout=60_000,
        )
        info = _infotext(page)
        assert f'ControlNet 0: "Module: canny, Model: {NEW_MODELS[0]} [' in info
        page.screenshot(path=str(SCREENSHOTS / "controlnet_t2i_adapter.png"), full_page=True)


def test_the_api_lists_them_runs_an_adapter_unit_and_refuses_a_misfit(server: LaunchedServer) -> None:
    listed = requests.get(f"{server.url}/controlnet/model_list", timeout=60).json()["model_list"]
    assert all(any(label.startswith(f"{name} [") for label in listed) for name in NEW_MODELS), listed
    body = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64}
    cn = {"module": "canny", "image": b64(control_picture()), "weight": 1.0}

    def txt2img(model: str, **extra: Any) -> requests.Response:
        units = {"controlnet": {"args": [cn | {"model": model, **extra}]}}
        return requests.post(f"{server.url}/sdapi/v1/txt2img", json=body | {"alwayson_scripts": units}, timeout=300)

    ok = txt2img(NEW_MODELS[0])
    assert ok.status_code == 200, ok.text
    info = parse_infotext(json.loads(ok.json()["info"])["infotexts"][0])
    assert info["ControlNet 0"].startswith(f"Module: canny, Model: {NEW_MODELS[0]} [")
    misfit = txt2img(NEW_MODELS[1], union_control_type="Depth")  # the active checkpoint is SD1
    assert misfit.status_code == 422 and "for SDXL-like" in misfit.text, misfit.text
    assert requests.get(f"{server.url}/controlnet/version", timeout=60).json() == {"version": 3}
