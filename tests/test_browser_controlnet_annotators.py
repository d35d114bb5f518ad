"""The ControlNet unit's preprocessor dropdown in a browser: an annotator appears only once its weights are in
``models/annotators/`` (after the refresh button), and its map previews in the unit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.annotator_models import save_tiny_depth_anything, save_tiny_segformer
from tests.browser import browser_page
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_controlnet import control_picture
from tests.test_controlnet_api import write_controlnets

pytestmark = pytest.mark.app
SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "screenshots"


def prepare(models: Path, tiny: TinyModels) -> None:
    write_controlnets(models, tiny)
    save_tiny_depth_anything(models / "annotators" / "depth_anything")


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("annotators-ui", prepare=lambda models: prepare(models, tiny)) as s:
        yield s


def _options(page, elem_id: str) -> list[str]:
    page.click(f"#{elem_id} input")
    page.wait_for_selector("ul[role=listbox] li")
    options = page.eval_on_selector_all(
        "ul[role=listbox] li", "items => items.map(i => i.textContent.replace('✓', '').trim())"
    )
    page.keyboard.press("Escape")
    return options


def test_annotators_in_the_dropdown_follow_the_weights(server: LaunchedServer, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    picture = tmp_path / "control.png"
    control_picture(128).save(picture)
    unit = "txt2img_controlnet_unit0"
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        page.click("#txt2img_controlnet_accordion")
        options = _options(page, f"{unit}_module")
        assert "depth_anything" in options and "normal_midas" in options and "seg_ofade20k" not in options
        save_tiny_segformer(server.models / "annotators" / "seg_ofade20k")
        page.click(f"#{unit}_refresh")
        page.wait_for_timeout(500)
        assert "seg_ofade20k" in _options(page, f"{unit}_module")
        page.set_input_files(f"#{unit}_image input[type=file]", str(picture))
        page.wait_for_selector(f"#{unit}_image img")
        page.click("#txt2img_prompt textarea")  # focus away from the dropdown the listing above left focused
        box = page.locator(f"#{unit}_module input")
        box.click()
        box.fill("depth_anything")
        page.get_by_role("option", name="depth_anything", exact=True).click()
        page.keyboard.press("Escape")
        page.click(f"#{unit}_run_preview")
        page.wait_for_selector(f"#{unit}_preview img", timeout=60_000)
        page.locator("#txt2img_controlnet_accordion").scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "controlnet_annotator_depth.png"), full_page=True)
