"""Settings survive a real restart: changed through /sdapi/v1/options and through the Settings tab in a browser.

One server folder is started, changed, stopped and started again over the same config.json; a corrupt
config.json is kept aside and reported; a remembered checkpoint that is gone falls back with a message.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.api_support import private_models_dir, server_args
from tests.browser import browser_page, set_number
from tests.server import running_server

pytestmark = pytest.mark.app
TIMEOUT = 120
SCREENSHOTS = Path(os.environ.get("EASEL_SCREENSHOTS", "/tmp/easel-screenshots"))


def args_without_ckpt(models: Path, outputs: Path) -> list[str]:
    """The tests' server command line, less ``--ckpt`` (which would win over the remembered checkpoint)."""
    args = server_args(models, outputs)
    at = args.index("--ckpt")
    return args[:at] + args[at + 2 :]


def banner_text(url: str) -> str:
    """The text of the banner under the checkpoint picker, from the page's Gradio config."""
    config = requests.get(f"{url}/config", timeout=TIMEOUT).json()
    found = [c["props"].get("value") for c in config["components"] if c["props"].get("elem_id") == "easel_demo_banner"]
    return str(found[0] or "")


def component_value(url: str, elem_id: str) -> object:
    config = requests.get(f"{url}/config", timeout=TIMEOUT).json()
    return next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == elem_id)


def change_in_the_settings_tab(url: str, profile: Path) -> str:
    """Edit three settings and one tab default in the browser, press Apply; the status text it shows."""
    with browser_page(profile) as page:
        page.goto(url)
        page.get_by_role("tab", name="Settings").click()
        page.locator("#settings_search input, #settings_search textarea").first.fill("pattern")
        pattern = page.locator(
            "#setting_directories_filename_pattern input, #setting_directories_filename_pattern textarea"
        )
        pattern.first.fill("[date]-[model_name]")
        page.locator("#settings_search input, #settings_search textarea").first.fill("")
        set_number(page, "setting_eta_ddim", 0.3)
        set_number(page, "setting_ui_txt2img_steps", 7)
        page.locator("#setting_randn_source label", has_text="CPU").click()
        page.locator("#settings_apply").click()
        status = page.locator("#settings_status")
        status.get_by_text("Applied").wait_for(timeout=30_000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "settings_applied.png"), full_page=True)
        page.locator("#settings_search input, #settings_search textarea").first.fill("jpeg")
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENSHOTS / "settings_search_jpeg.png"))
        assert not page.locator("#setting_eta_ddim").is_visible()  # the search hides what does not match
        assert page.locator("#setting_jpeg_quality").is_visible()
        return status.inner_text()


def test_settings_survive_a_restart(models_dir: Path, tmp_path: Path) -> None:
    models = private_models_dir(models_dir, tmp_path)
    args, log = args_without_ckpt(models, tmp_path / "outputs"), tmp_path / "server.log"
    with running_server(args, log) as url:
        first = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()["sd_model_checkpoint"]
        titles = [m["title"] for m in requests.get(f"{url}/sdapi/v1/sd-models", timeout=TIMEOUT).json()]
        other = next(t for t in titles if not t.startswith(first.split(" [")[0]) and "sdxl" not in t)
        changes = {
            "sd_model_checkpoint": other,
            "samples_format": "jpg",
            "jpeg_quality": 85,
            "eta_ancestral": 0.4,
            "s_noise": 0.9,
            "CLIP_stop_at_last_layers": 2,
            "show_progress_every_n_steps": 2,
            "sd_checkpoint_cache": 3,
            "samples_filename_pattern": "[seed]-[model_name]",
            "sd_vae": "tiny-vae.safetensors",
            "an_extension_option": {"kept": [1, 2]},
        }
        answer = requests.post(f"{url}/sdapi/v1/options", json=changes, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        status = change_in_the_settings_tab(url, tmp_path / "profile")
    assert "eta_ddim" in status and "randn_source" in status and "directories_filename_pattern" in status
    assert "Needs a restart" in status and "txt2img/Sampling steps/value" in status
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["samples_format"] == "jpg" and saved["randn_source"] == "CPU"
    assert (tmp_path / "config.json.bak").exists()

    with running_server(args, log) as url:  # the restart
        options = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
        for key, value in changes.items():
            if key == "sd_model_checkpoint":
                assert options[key].split(" [")[0] == other.split(" [")[0]
            else:
                assert options[key] == value, key
        assert options["eta_ddim"] == 0.3 and options["randn_source"] == "CPU"
        assert options["directories_filename_pattern"] == "[date]-[model_name]"
        assert component_value(url, "txt2img_steps") == 7  # ui-config.json: the tab's default
        assert component_value(url, "txt2img_clip_skip") == 2  # CLIP_stop_at_last_layers starts the widget

        reset = requests.post(f"{url}/sdapi/v1/options", json={"sd_vae": "Automatic"}, timeout=TIMEOUT)
        assert reset.status_code == 200
        payload = {"prompt": "a kettle", "steps": 2, "width": 64, "height": 64, "seed": 31337, "save_images": True}
        made = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=TIMEOUT)
        assert made.status_code == 200, made.text
        files = list((tmp_path / "outputs" / "txt2img-images").glob("*/*-31337-*.jpg"))
        assert len(files) == 1, list((tmp_path / "outputs").rglob("*"))
        data = base64.b64encode(files[0].read_bytes()).decode()
        info = requests.post(f"{url}/sdapi/v1/png-info", json={"image": data}, timeout=TIMEOUT).json()
    assert "Seed: 31337" in info["info"] and info["parameters"]["Seed"] == "31337"  # read from the EXIF UserComment
    model_stem = other.split(" [")[0].removesuffix(".safetensors")
    assert files[0].parent.name.endswith(f"-{model_stem}") and files[0].stem.endswith(model_stem)
    with Image.open(files[0]) as image:
        assert image.format == "JPEG"


def test_a_corrupt_config_is_kept_aside_and_reported(models_dir: Path, tmp_path: Path) -> None:
    models = private_models_dir(models_dir, tmp_path)
    broken = '{"samples_format": "jpg", "jpeg_'
    (tmp_path / "config.json").write_text(broken)
    with running_server(server_args(models, tmp_path / "outputs"), tmp_path / "server.log") as url:
        banner = banner_text(url)
        options = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
        with browser_page(tmp_path / "profile") as page:  # what a user sees on opening the page
            page.goto(url)
            page.locator("#easel_demo_banner").get_by_text("was not valid JSON").wait_for(timeout=30_000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "corrupt_config_banner.png"))
    aside = list(tmp_path.glob("config.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == broken
    assert "was not valid JSON" in banner and aside[0].name in banner
    assert "was not valid JSON" in (tmp_path / "server.log").read_text()
    assert options["samples_format"] == "png"  # defaults, and the server runs


def test_a_remembered_checkpoint_that_is_gone_falls_back_with_a_message(models_dir: Path, tmp_path: Path) -> None:
    models = private_models_dir(models_dir, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": "deleted-model.safetensors [0123456789]"}))
    with running_server(args_without_ckpt(models, tmp_path / "outputs"), tmp_path / "server.log") as url:
        banner = banner_text(url)
        options = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
    assert "deleted-model.safetensors" in banner and "started on another" in banner
    assert options["sd_model_checkpoint"]  # it did start on one
