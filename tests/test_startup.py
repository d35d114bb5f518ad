"""Start-up survives what users' folders hold: a broken checkpoint sorting first, a broken styles.csv, leftovers."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from pipelines.errors import EaselError
from webui.cli import parse_args
from webui.server import build_context


def _args(root: Path, *extra: str):
    return parse_args(
        [
            "--models-dir",
            str(root / "models"),
            "--outputs-dir",
            str(root / "outputs"),
            "--embeddings-dir",
            str(root / "embeddings"),
            "--no-demo",
            "--device",
            "cpu",
            *extra,
        ]
    )


@pytest.fixture
def user_folders(tiny, tmp_path: Path) -> Path:
    """A zero-byte partial download that sorts first, a good checkpoint, a 220 KB styles.csv with a stray quote."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "aaa-partial.safetensors").write_bytes(b"")
    (checkpoints / "tiny-sd1.safetensors").hardlink_to(tiny.single_file("sd1"))
    rows = [f"style{i},a painting of {{prompt}} {'in detail ' * 10},lowres" for i in range(2000)]
    rows[3] = 'broken,"a stray quote, {prompt},lowres'
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\n" + "\n".join(rows) + "\n")
    day = tmp_path / "outputs" / "txt2img-images" / "2024-05-17"
    day.mkdir(parents=True)
    (day / ".tmp-k9x2_abc.png").write_bytes(b"\x89PNG half written")
    old = time.time() - 3600
    os.utime(day / ".tmp-k9x2_abc.png", (old, old))
    return tmp_path


def test_start_up_skips_what_it_cannot_read_and_says_so(user_folders: Path, caplog: pytest.LogCaptureFixture) -> None:
    from webui.app import banner_text, build_app

    styles_text = (user_folders / "styles.csv").read_text()
    with caplog.at_level(logging.WARNING):
        ctx = build_context(_args(user_folders))
    assert ctx.active_name() == "tiny-sd1.safetensors"  # the next loadable one
    assert list(ctx.skipped_checkpoints) == ["aaa-partial.safetensors"]
    assert "not a readable .safetensors file" in ctx.skipped_checkpoints["aaa-partial.safetensors"]
    assert "aaa-partial.safetensors" in caplog.text and "could not be loaded" in caplog.text
    assert "aaa-partial.safetensors" in banner_text(ctx)
    assert not (user_folders / "outputs" / "txt2img-images" / "2024-05-17" / ".tmp-k9x2_abc.png").exists()
    assert "unfinished image" in caplog.text

    app = build_app(ctx)  # a broken styles.csv once raised csv.Error here: the server never started
    picker = next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == "txt2img_styles")
    assert picker.choices == [] and "line 5" in (picker.info or "")
    assert "styles.csv" in caplog.text
    assert (user_folders / "styles.csv").read_text() == styles_text  # never rewritten


def test_an_explicit_ckpt_that_cannot_load_stops_start_up_clearly(user_folders: Path) -> None:
    """Asked for by name, a broken file is fatal: running on another model would give images from the wrong one."""
    with pytest.raises(EaselError, match=r"--ckpt aaa-partial.safetensors: could not be loaded: .*not a readable"):
        build_context(_args(user_folders, "--ckpt", "aaa-partial.safetensors"))
