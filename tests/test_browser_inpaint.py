"""What an artist does on the Inpaint tab: upload a picture, paint a stroke with the mouse, generate, outpaint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import browser_page, set_number
from tests.server import LaunchedServer
from webui.tabs.inpaint import BRUSH_SIZE

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 128, 96
MASK_BLUR = 4


@pytest.fixture(scope="module")
def server(plain_server: LaunchedServer) -> tuple[str, Path]:
    return plain_server.url, plain_server.outputs


def picture(path: Path) -> Path:
    """A patterned picture (no magenta, so the brush shows) of WIDTH x HEIGHT."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([40 + (x % 32) * 4, 90 + (y % 24) * 5, 160 + ((x + y) % 16) * 4], axis=-1)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return path


def wait_until_done(page, timeout_ms: int = 60_000) -> None:
    """Wait for the tab's progress area to report the finished job (its final update has been applied)."""
    page.locator("#inpaint_progress .easel-progress.done").wait_for(state="visible", timeout=timeout_ms)


def wait_for_file(folder: Path, pattern: str, page, timeout_ms: int = 60_000) -> Path:
    for _ in range(timeout_ms // 250):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        page.wait_for_timeout(250)
    raise AssertionError(f"no {pattern} in {folder}")


def test_paint_a_stroke_generate_and_only_the_stroke_changes(server, tmp_path: Path) -> None:
    url, outputs = server
    source = picture(tmp_path / "source.png")
    with browser_page(tmp_path / "profile") as page:
        page.goto(url)
        page.get_by_role("tab", name="Inpaint").click()
        editor = page.locator("#inpaint_editor")
        zoom_label = editor.locator(".zoom-number span")
        zoom_label.wait_for(timeout=30_000)
        empty_zoom = zoom_label.inner_text().strip()  # the blank canvas's zoom
        editor.locator("input[type=file]").set_input_files(str(source))
        brush = editor.locator("button[aria-label=Brush]")
        brush.wait_for(timeout=30_000)
        # the upload is in once the canvas has re-fitted to the small picture (a loaded machine takes a while)
        page.wait_for_function(
            "([el, before]) => el.innerText.trim() !== before",
            arg=[zoom_label.element_handle(), empty_zoom],
            timeout=30_000,
        )
        page.wait_for_timeout(500)
        zoom = float(editor.locator(".zoom-number span").inner_text().strip().rstrip("%")) / 100
        brush.click()

        # A horizontal stroke through the middle of the canvas; the picture is centred on it.
        box = editor.locator("canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        half = 60
        page.mouse.move(cx - half, cy)
        page.mouse.down()
        for step in range(13):
            page.mouse.move(cx - half + step * 2 * half / 12, cy, steps=2)
        page.mouse.up()

        page.locator("#inpaint_prompt textarea").fill("a small bird")
        set_number(page, "inpaint_steps", 3)
        set_number(page, "inpaint_width", 64)
        set_number(page, "inpaint_height", 64)
        set_number(page, "inpaint_seed", 777)
        set_number(page, "inpaint_mask_blur", MASK_BLUR)
        page.screenshot(path=str(tmp_path / "inpaint-painted.png"))
        page.locator("#inpaint_generate").click()
        page.locator("#inpaint_gallery img").first.wait_for(state="visible", timeout=60_000)
        saved = wait_for_file(outputs, "inpaint-images/*/*-777.png", page)

        # Outpaint twice in a row: the second one starts from the first one's result, with no re-upload.
        page.locator("#outpaint_accordion").get_by_text("Outpaint").first.click()
        pixels_box = page.locator("#outpaint_pixels input[type=number]").first
        pixels_box.wait_for(state="visible", timeout=10_000)
        page.wait_for_timeout(500)  # the accordion's content is rendered on first open
        set_number(page, "outpaint_pixels", 16)
        slider = page.locator("#outpaint_pixels input[type=range]").first
        # the range input moves only once Gradio has taken the new value
        page.wait_for_function("el => el.value === '16'", arg=slider.element_handle(), timeout=10_000)
        set_number(page, "inpaint_seed", 900)
        page.locator("#outpaint_generate").click()
        first = wait_for_file(outputs, "inpaint-images/*/*-900.png", page)
        wait_until_done(page)  # the same update puts the result back into the editor
        set_number(page, "inpaint_seed", 901)
        page.locator("#outpaint_generate").click()
        second = wait_for_file(outputs, "inpaint-images/*/*-901.png", page)
        page.screenshot(path=str(tmp_path / "inpaint-outpainted.png"))

    with Image.open(source) as a, Image.open(saved) as b:
        before = np.asarray(a.convert("RGB")).astype(int)
        after = np.asarray(b.convert("RGB")).astype(int)
    assert after.shape == before.shape
    changed = (before != after).any(axis=2)

    # Where the stroke is, in picture pixels, grown by the brush radius and the blur's reach.
    x0, x1 = WIDTH / 2 - half / zoom, WIDTH / 2 + half / zoom
    reach = BRUSH_SIZE + 4 * MASK_BLUR + 2
    allowed = np.zeros_like(changed)
    top, bottom = max(0, int(HEIGHT / 2 - reach)), int(HEIGHT / 2 + reach) + 1
    allowed[top:bottom, max(0, int(x0 - reach)) : int(x1 + reach) + 1] = True
    assert not changed[~allowed].any(), f"{int(changed[~allowed].sum())} pixels changed outside the stroke"
    core = changed[HEIGHT // 2 - 4 : HEIGHT // 2 + 4, int(x0) : int(x1)]
    assert core.mean() > 0.5  # the stroke itself was repainted
    assert changed[:4].sum() == 0 and changed[-4:].sum() == 0  # far rows untouched

    with Image.open(first) as one, Image.open(second) as two:
        assert one.size == (WIDTH + 16, HEIGHT)
        assert two.size == (WIDTH + 32, HEIGHT)
