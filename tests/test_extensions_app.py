"""Extensions in a launched server: a test extension's field, tab, route and model patch through gradio_client,
the REST API, the infotext and a browser; broken ones isolated; disabled ones gone; install gated under --listen.

Two servers for the module: ``server`` (loopback, the test extensions enabled) and ``listening`` (``--listen`` with
a login, ``testext`` disabled in the saved state). Each costs one start, shared by every test here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gradio_client import Client

from pipelines.extensions.state import ExtensionState
from pipelines.metadata.infotext import parse_infotext
from tests.api_support import AUTH, decode, tiny_txt2img
from tests.browser import browser_page, set_number
from tests.conftest import Launch
from tests.extension_support import write_extension, write_test_extensions
from tests.server import LaunchedServer

pytestmark = pytest.mark.app
SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "screenshots"


@pytest.fixture(scope="module")
def server(launch: Launch) -> Iterator[LaunchedServer]:
    with launch("extensions", prepare=lambda models: write_test_extensions(models.parent / "extensions")) as s:
        yield s


def _disabled_testext(models: Path) -> None:
    write_test_extensions(models.parent / "extensions")
    ExtensionState.beside(models.parent / "extensions").set_enabled("testext", False)


@pytest.fixture(scope="module")
def listening(launch: Launch) -> Iterator[LaunchedServer]:
    with launch("ext-listen", "--listen", auth="flag", prepare=_disabled_testext) as s:
        yield s


def txt2img_positional(client: Client) -> tuple:
    """/txt2img as old gradio_client scripts call it: positional values, nothing about extensions."""
    values = ["tiny-sd1.safetensors", "a boat", "", "Euler a", "Automatic", 2, 6, 64, 64, 1, 1, 21, 1]
    return client.predict(*values, api_name="/txt2img")


def test_gradio_client_keeps_its_positional_call_and_reaches_the_extension_tab(server: LaunchedServer) -> None:
    client = Client(server.url, verbose=False)
    _gallery, _preview, _progress, infotext, *_ = txt2img_positional(client)
    assert parse_infotext(infotext)["Seed"] == "21" and "Testext shift" not in infotext
    assert client.predict("ann", api_name="/testext_echo") == "hello ann"


def test_api_alwayson_values_reach_the_patch_and_the_infotext(server: LaunchedServer) -> None:
    api = f"{server.url}/sdapi/v1"
    scripts = requests.get(f"{api}/scripts", timeout=30).json()
    assert "testext" in scripts["txt2img"] and "broken_import" not in scripts["txt2img"]
    info = requests.get(f"{api}/script-info", timeout=30).json()
    entry = next(i for i in info if i["name"] == "testext" and not i["is_img2img"])
    assert entry["is_alwayson"] and entry["args"][0]["label"] == "Testext shift"
    before = requests.get(f"{server.url}/testext/stats", timeout=30).json()
    plain = requests.post(f"{api}/txt2img", json=tiny_txt2img(), timeout=300).json()
    shifted_payload = tiny_txt2img(alwayson_scripts={"testext": {"args": [0.8]}})
    shifted = requests.post(f"{api}/txt2img", json=shifted_payload, timeout=300).json()
    after = requests.get(f"{server.url}/testext/stats", timeout=30).json()
    assert after["patched"] == before["patched"] + 1 and after["images"] == before["images"] + 2
    text = json.loads(shifted["info"])["infotexts"][0]
    assert parse_infotext(text)["Testext shift"] == "0.8"
    assert decode(plain["images"][0]).tobytes() != decode(shifted["images"][0]).tobytes()
    # the infotext field reads back: a payload with only the infotext gets the extension's value again
    again = requests.post(f"{api}/txt2img", json={**tiny_txt2img(), "infotext": text}, timeout=300).json()
    assert "Testext shift: 0.8" in json.loads(again["info"])["infotexts"][0]
    missing = requests.post(f"{api}/txt2img", json=tiny_txt2img(alwayson_scripts={"nope": {}}), timeout=60)
    assert missing.status_code == 422 and "always-on script 'nope' not found" in missing.text


def test_broken_extensions_are_listed_with_their_errors_and_generation_goes_on(server: LaunchedServer) -> None:
    client = Client(server.url, verbose=False)
    txt2img_positional(client)  # the raising after-image hook runs (and is switched off); images still come back
    log = server.log.read_text()
    assert "extension broken_import not loaded" in log and "extension broken_hook switched off" in log


def test_install_and_remove_from_a_local_folder_on_a_loopback_server(server: LaunchedServer, tmp_path: Path) -> None:
    source = write_extension(tmp_path, "fresh", "def setup(ctx):\n    pass\n")
    client = Client(server.url, verbose=False)
    table, notice, _choice = client.predict(str(source), api_name="/extensions_install")
    user = server.root / "extensions"
    assert (user / "fresh" / "extension.toml").exists() and "fresh" in table and "installed" in notice
    with pytest.raises(Exception, match="already installed"):
        client.predict(str(source), api_name="/extensions_install")
    with pytest.raises(Exception, match="built in and cannot be removed"):
        client.predict("xyz_grid", api_name="/extensions_remove")
    table, notice, _choice = client.predict("fresh", api_name="/extensions_remove")
    assert not (user / "fresh").exists() and "removed" in notice


def test_listen_refuses_install_and_remove_and_disabled_extensions_are_gone(listening: LaunchedServer) -> None:
    client = Client(listening.url, auth=AUTH, verbose=False)
    with pytest.raises(Exception, match="enable-insecure-extension-access"):
        client.predict("https://example.invalid/x.git", api_name="/extensions_install")
    with pytest.raises(Exception, match="enable-insecure-extension-access"):
        client.predict("broken_hook", api_name="/extensions_remove")
    assert (listening.root / "extensions" / "broken_hook").exists()
    # enabling/disabling stays allowed: it runs no new code
    _table, notice = client.predict("broken_hook", False, api_name="/extensions_apply")
    assert "Restart" in notice
    session = requests.Session()
    session.auth = AUTH
    assert session.get(f"{listening.url}/testext/stats", timeout=30).status_code == 404
    assert requests.get(f"{listening.url}/broken_hook/x", timeout=30).status_code == 401  # behind the login
    scripts = session.get(f"{listening.url}/sdapi/v1/scripts", timeout=30).json()
    assert "testext" not in scripts["txt2img"]
    assert "testext_echo" not in json.dumps(client.view_api(return_format="dict", print_info=False))


def test_extension_ui_in_a_browser(server: LaunchedServer, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        page.get_by_role("tab", name="Extensions").click()
        page.wait_for_selector("#extensions_table table")
        table = page.inner_text("#extensions_table")
        assert "testext" in table and "running" in table and "ModuleNotFoundError" in table
        page.screenshot(path=str(SCREENSHOTS / "extensions_tab.png"), full_page=True)
        page.get_by_role("tab", name="txt2img").click()
        page.click("#txt2img_testext_accordion")
        set_number(page, "txt2img_testext_shift", 0.6)
        set_number(page, "txt2img_steps", 2)
        set_number(page, "txt2img_width", 64)
        set_number(page, "txt2img_height", 64)
        page.click("#txt2img_generate")  # at once: Generate recomputes the accordion's State first (webui/derived.py)
        page.wait_for_function(
            "() => (document.querySelector('#txt2img_info textarea')?.value || '').includes('Testext shift')",
            timeout=180_000,
        )
        assert "Testext shift: 0.6" in page.input_value("#txt2img_info textarea")
        page.screenshot(path=str(SCREENSHOTS / "extension_accordion.png"), full_page=True)
        page.get_by_role("tab", name="Testext").click()
        page.fill("#testext_name textarea", "bob")
        page.click("#testext_go")
        page.wait_for_function("() => document.querySelector('#testext_echo textarea')?.value === 'hello bob'")


def _pick(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.blur()  # a multi-select still focused from the last pick would not open its list again
    box.click()
    box.fill(option)  # filters the list, so an option far down it is shown
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_xyz_plot_through_the_api_with_a1111_args(server: LaunchedServer) -> None:
    # A1111 1.10's script_args; x: Steps (index 4), y: Seed (1), no z; draw legend, include lone images
    args = [4, "1, 2", "", 1, "3-4", "", 0, "", "", True, True, False, False, 0, False, False]
    body = tiny_txt2img(script_name="X/Y/Z plot", script_args=args, save_images=True)
    reply = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    info = json.loads(reply.json()["info"])
    grid, *cells = [decode(i) for i in reply.json()["images"]]
    assert len(cells) == 4 and grid.width > 128 and grid.height > 128
    fields = parse_infotext(info["infotexts"][0])
    assert (fields["Script"], fields["X Type"], fields["X Values"]) == ("X/Y/Z plot", "Steps", "1, 2")
    assert (fields["Y Type"], fields["Y Values"]) == ("Seed", "3-4") and info["all_seeds"][1:] == [3, 3, 4, 4]
    assert list((server.outputs / "txt2img-grids").rglob("*.png"))


def test_xyz_plot_in_a_browser(server: LaunchedServer, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = set((server.outputs / "txt2img-grids").rglob("*.png"))
    with browser_page(tmp_path / "profile") as page:
        page.goto(server.url + "/")
        set_number(page, "txt2img_width", 128)
        set_number(page, "txt2img_height", 128)
        _pick(page, "txt2img_script", "X/Y/Z plot")
        _pick(page, "txt2img_xyz_x_type", "Steps")
        page.fill("#txt2img_xyz_x_values textarea", "1, 2, 3")
        _pick(page, "txt2img_xyz_y_type", "Sampler")
        _pick(page, "txt2img_xyz_y_picked", "Euler")
        _pick(page, "txt2img_xyz_y_picked", "Heun")
        page.click("#txt2img_generate")
        page.wait_for_function(
            "() => (document.querySelector('#txt2img_info textarea')?.value || '').includes('X/Y/Z plot')",
            timeout=300_000,
        )
        text = page.input_value("#txt2img_info textarea")
        assert "X Type: Steps" in text and 'Y Values: "Euler, Heun"' in text
        page.screenshot(path=str(SCREENSHOTS / "xyz_plot_ui.png"), full_page=True)
    grids = sorted(set((server.outputs / "txt2img-grids").rglob("*.png")) - before)
    assert len(grids) == 1
    from PIL import Image

    with Image.open(grids[0]) as grid:
        assert grid.width > 3 * 128 and grid.height > 2 * 128
        grid.save(SCREENSHOTS / "xyz_grid.png")
