"""The memory flags through a launched server: A1111's --medvram alias, /sdapi/v1/memory, the mode in the UI."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.browser import browser_page

pytestmark = pytest.mark.app


def test_medvram_alias_memory_report_and_mode_beside_the_device(launch, tmp_path: Path) -> None:
    with launch("memory", "--medvram", "--vae-tiling", "on") as server:
        flags = requests.get(f"{server.url}/sdapi/v1/cmd-flags", timeout=60).json()
        assert flags["memory"] == "medium" and flags["vae_tiling"] == "on"
        memory = requests.get(f"{server.url}/sdapi/v1/memory", timeout=60).json()
        policy = memory["policy"]
        assert memory["ram"]["total"] > 0 and policy["setting"] == "medium" and policy["device"] == "cpu"
        plan = policy["plan"]  # decided when the model was activated at start-up, for its native size
        assert plan["mode"] == "resident" and plan["vae_tiling"] is True  # a CPU has nothing to offload to
        assert "512x512" in plan["reason"] and "cpu: everything in RAM" in plan["reason"]
        with browser_page(tmp_path / "profile") as page:
            page.goto(server.url)
            status = page.locator("#easel_model_status")
            status.wait_for(timeout=60_000)
            assert "cpu · resident, VAE tiled" in status.inner_text()
            assert "everything in RAM" in (status.locator("abbr").get_attribute("title") or "")
            page.locator("#easel_top").screenshot(path=str(tmp_path / "memory_mode.png"))
