"""What an artist does in the browser: type a prompt, press Generate, see the image."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import browser_page, set_number
from tests.server import LaunchedServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(plain_server: LaunchedServer) -> tuple[str, Path]:
    return plain_server.url, plain_server.outputs


def test_type_prompt_generate_and_see_image_in_gallery(server, tmp_path: Path) -> None:
    url, outputs = server
    with browser_page(tmp_path / "profile") as page:
        page.goto(url)
        page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)
        page.locator("#txt2img_prompt textarea").fill("a small red house by a lake")
        set_number(page, "txt2img_steps", 3)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        set_number(page, "txt2img_seed", 4242)
        page.locator("#txt2img_generate").click()
        page.locator("#txt2img_gallery img").first.wait_for(state="visible", timeout=60_000)
        info = page.locator("#txt2img_info textarea")
        page.wait_for_function("el => el.value.includes('Seed: 4242')", arg=info.element_handle(), timeout=30_000)
        page.screenshot(path=str(tmp_path / "txt2img.png"))
        assert "a small red house by a lake" in info.input_value()
    saved = list(outputs.glob("txt2img-images/*/*-4242.png"))
    assert len(saved) == 1


def test_refiner_picked_in_the_ui_reaches_the_engine(server, tmp_path: Path) -> None:
    """The Refiner accordion's values travel in a State (the positional API stays): picked, they reach the infotext."""
    url, _ = server
    with browser_page(tmp_path / "profile") as page:
        page.goto(url)
        page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)
        page.locator("#txt2img_prompt textarea").fill("a lighthouse")
        page.locator("#txt2img_refiner_accordion").click()
        page.locator("#txt2img_refiner_checkpoint input").click()
        page.get_by_role("option", name="tiny-sd1.safetensors", exact=True).click()
        set_number(page, "txt2img_refiner_switch_at", 0.5)
        set_number(page, "txt2img_steps", 4)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        set_number(page, "txt2img_seed", 777)
        page.locator("#txt2img_generate").click()
        info = page.locator("#txt2img_info textarea")
        page.wait_for_function("el => el.value.includes('Seed: 777')", arg=info.element_handle(), timeout=60_000)
        page.screenshot(path=str(tmp_path / "refiner.png"), full_page=True)
        text = info.input_value()
    assert "Refiner: tiny-sd1" in text and "Refiner switch at: 0.5" in text


def test_pickers_follow_the_server_after_a_reload_and_a_rescan(launch, models_dir: Path, tmp_path: Path) -> None:
    """The top picker shows the checkpoint active now (an API client switched it), and ↻ refreshes the refiners."""
    import requests

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    source = models_dir / "Stable-diffusion" / "tiny-sd1.safetensors"
    for name in ("first.safetensors", "second.safetensors"):
        (ckpts / name).symlink_to(source)
    with (
        launch("pickers", "--ckpt-dir", str(ckpts), "--ckpt", "first.safetensors") as server,
        browser_page(tmp_path / "profile") as page,
    ):
        page.goto(server.url)
        picker = page.locator("#easel_checkpoint input")
        picker.wait_for(timeout=30_000)
        before = picker.input_value()
        other = "second.safetensors" if before.startswith("first") else "first.safetensors"
        switched = requests.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": other}, timeout=60)
        assert switched.status_code == 200, switched.text
        page.reload()
        page.wait_for_function(
            "name => (document.querySelector('#easel_checkpoint input') || {}).value === name",
            arg=other,
            timeout=30_000,
        )
        (ckpts / "added-later.safetensors").symlink_to(source)
        page.locator("#easel_refresh").click()
        page.locator("#txt2img_refiner_accordion").click()
        page.locator("#txt2img_refiner_checkpoint input").click()
        page.get_by_role("option", name="added-later.safetensors", exact=True).wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "pickers.png"), full_page=True)
        assert picker.input_value() == other  # the rescan kept the active model, no switch back
