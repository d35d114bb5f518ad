"""The ControlNet unit's mask and the model-free reference preprocessor in a browser: upload a picture and a mask,
preview the inpaint_only map, generate with it, then switch the unit to reference_only with model None."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import browser_page, set_number
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_browser_controlnet import SCREENSHOTS, _infotext, _pick
from tests.test_controlnet_api import write_controlnets
from tests.test_controlnet_prep import box_mask, photo

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("controlnet-prep-ui", prepare=lambda models: write_controlnets(models, tiny)) as s:
        yield s


def _generate_until(page, text: str) -> str:
    page.click("#txt2img_generate")
    page.wait_for_function(
        f"() => (document.querySelector('#txt2img_info textarea')?.value || '').includes({text!r})", timeout=90_000
    )
    return _infotext(page)


def test_mask_and_reference_units_from_the_accordion(server: LaunchedServer, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    picture, mask = tmp_path / "picture.png", tmp_path / "mask.png"
    photo(128, 96).save(picture)
    box_mask((128, 96), (40, 20, 100, 70)).save(mask)
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        set_number(page, "txt2img_steps", 3)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        set_number(page, "txt2img_seed", 12)
        page.click("#txt2img_controlnet_accordion")
        page.set_input_files("#txt2img_controlnet_unit0_image input[type=file]", str(picture))
        page.wait_for_selector("#txt2img_controlnet_unit0_image img")
        page.set_input_files("#txt2img_controlnet_unit0_mask input[type=file]", str(mask))
        page.wait_for_selector("#txt2img_controlnet_unit0_mask img")
        _pick(page, "txt2img_controlnet_unit0_module", "inpaint_only")
        _pick(page, "txt2img_controlnet_unit0_model", "control_tiny_sd15_canny")
        assert page.is_hidden("#txt2img_controlnet_unit0_threshold_a")  # inpaint_only has no thresholds
        page.click("#txt2img_controlnet_unit0_run_preview")
        page.wait_for_selector("#txt2img_controlnet_unit0_preview img", timeout=60_000)
        page.click("#txt2img_controlnet_unit0_enabled input")
        page.wait_for_timeout(500)
        info = _generate_until(page, "Module: inpaint_only")
        assert 'ControlNet 0: "Module: inpaint_only, Model: control_tiny_sd15_canny [' in info
        page.screenshot(path=str(SCREENSHOTS / "controlnet_inpaint_only_mask.png"), full_page=True)
        src = page.get_attribute("#txt2img_controlnet_unit0_preview img", "src")
        assert src
        _pick(page, "txt2img_controlnet_unit0_module", "reference_only")
        _pick(page, "txt2img_controlnet_unit0_model", "None")
        page.wait_for_timeout(500)
        assert page.is_hidden("#txt2img_controlnet_unit0_res")  # reference_only takes no processor resolution
        assert "Style Fidelity" in page.inner_text("#txt2img_controlnet_unit0_threshold_a")
        info = _generate_until(page, "Module: reference_only")
        assert 'ControlNet 0: "Module: reference_only, Model: None, Weight: 1' in info
        page.screenshot(path=str(SCREENSHOTS / "controlnet_reference_only.png"), full_page=True)
    assert Image.open(SCREENSHOTS / "controlnet_reference_only.png").size[0] > 400
