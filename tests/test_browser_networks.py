"""Extra networks, styles and the VAE picker as an artist uses them: click a LoRA, pick a style, generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from PIL import Image

from pipelines.conditioning.styles import StyleLibrary
from pipelines.metadata.infotext import parse_infotext
from tests.browser import browser_page, set_number
from tests.server import LaunchedServer
from webui.tabs.networks import toggle_in_prompt

pytestmark = pytest.mark.browser
SCREENSHOT = Path("/tmp/networks_ui.png")
TAB_LABELS = {"img2img": "img2img", "inpaint": "Inpaint"}


@pytest.fixture(scope="module")
def net_server(plain_server: LaunchedServer):
    """The shared plain server: one LoRA (in a subfolder), one embedding, one VAE and a styles file (conftest).

    These tests pick the global VAE and save a style; both are put back for the other tests on this server.
    """
    styles = plain_server.styles.read_text()
    try:
        yield plain_server.url, plain_server.outputs, plain_server.root
    finally:
        plain_server.styles.write_text(styles)
        reset = requests.post(f"{plain_server.url}/sdapi/v1/options", json={"sd_vae": "Automatic"}, timeout=60)
        assert reset.status_code == 200, reset.text


def _open_networks(page, url: str) -> None:
    page.goto(url)
    page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)
    page.locator("#txt2img_networks_accordion").get_by_text("Extra networks & styles").click()
    page.locator("#txt2img_lora_cards").get_by_text("tinylora", exact=True).wait_for(timeout=10_000)


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_lora_click_style_and_vae_reach_the_saved_image(net_server, tmp_path: Path) -> None:
    url, outputs, _ = net_server
    with browser_page(tmp_path / "profile") as page:
        _open_networks(page, url)
        prompt = page.locator("#txt2img_prompt textarea")
        prompt.fill("a small red house")
        page.locator("#txt2img_lora_cards").get_by_text("tinylora", exact=True).click()
        page.wait_for_function(
            "el => el.value.includes('<lora:tinylora:1>')", arg=prompt.element_handle(), timeout=10_000
        )
        page_prompt = prompt.input_value()
        _pick(page, "txt2img_styles", "fancy")
        _pick(page, "easel_vae", "other.vae.safetensors")
        set_number(page, "txt2img_steps", 2)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        set_number(page, "txt2img_seed", 515)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.wait_for_timeout(300)  # the style and VAE choices travel by their own (unqueued) events
        page.locator("#txt2img_generate").click()
        info = page.locator("#txt2img_info textarea")
        page.wait_for_function("el => el.value.includes('Seed: 515')", arg=info.element_handle(), timeout=60_000)
    assert page_prompt == "a small red house <lora:tinylora:1>"
    saved = list(outputs.glob("txt2img-images/*/*-515.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        fields = parse_infotext(image.text["parameters"])
    assert fields["Prompt"] == "masterpiece, a small red house <lora:tinylora:1>, golden hour"
    assert fields["Negative prompt"] == "lowres"
    assert fields["Lora hashes"].startswith("tinylora: ")
    assert fields["VAE"] == "other.vae.safetensors"


def test_embedding_click_toggles_and_prompt_saves_as_a_style(net_server, tmp_path: Path) -> None:
    url, _, root = net_server
    with browser_page(tmp_path / "profile") as page:
        _open_networks(page, url)
        prompt = page.locator("#txt2img_prompt textarea")
        prompt.fill("a cat")
        card = page.locator("#txt2img_embedding_cards").get_by_text("tinyemb", exact=True)
        card.click()
        page.wait_for_function("el => el.value === 'a cat tinyemb'", arg=prompt.element_handle(), timeout=10_000)
        card.click()  # a second click takes it out again
        page.wait_for_function("el => el.value === 'a cat'", arg=prompt.element_handle(), timeout=10_000)
        page.locator("#txt2img_neg_prompt textarea").fill("blurry")
        page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first.fill("cats")
        page.locator("#txt2img_save_style").click()
        page.wait_for_function(
            "el => el.value === ''",
            arg=page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first.element_handle(),
            timeout=10_000,
        )
        _pick(page, "txt2img_styles", "cats")  # the new style is offered at once
        for tab in ("img2img", "inpaint"):  # the same panel, built by the same function, on the other tabs
            page.get_by_role("tab", name=TAB_LABELS[tab], exact=True).click()
            page.locator(f"#{tab}_networks_accordion").get_by_text("Extra networks & styles").click()
            page.locator(f"#{tab}_lora_cards").get_by_text("tinylora", exact=True).wait_for(timeout=10_000)
            page.locator(f"#{tab}_styles").wait_for(timeout=10_000)
    saved = {style.name: style for style in StyleLibrary(root / "styles.csv").styles()}
    assert saved["cats"].prompt == "a cat" and saved["cats"].negative_prompt == "blurry"
    assert "fancy" in saved


@pytest.mark.parametrize(
    ("prompt", "text", "expected"),
    [
        ("", "<lora:a:1>", "<lora:a:1>"),
        ("a cat", "<lora:a:1>", "a cat <lora:a:1>"),
        ("a cat <lora:a:1>", "<lora:a:1>", "a cat"),
        ("tinyemb, a cat", "tinyemb", "a cat"),
        ("a tinyembx", "tinyemb", "a tinyembx tinyemb"),  # only a whole word counts as already there
    ],
)
def test_toggle_in_prompt(prompt: str, text: str, expected: str) -> None:
    assert toggle_in_prompt(prompt, text) == expected
