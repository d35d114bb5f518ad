"""Driving Debian's Chromium through Playwright (the browser Playwright would download is not reachable)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser_page(profile_dir: Path) -> Iterator[object]:
    """A fresh Chromium page; skips the test only when Chromium is not installed at all."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def set_number(page, elem_id: str, value: float) -> None:
    """Type into the number box of a Gradio slider or number input."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
