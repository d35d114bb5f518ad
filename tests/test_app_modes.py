"""/img2img, /inpaint and /outpaint on a launched server, driven through gradio_client like a script would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.metadata.infotext import parse_infotext
from tests.server import LaunchedServer

pytestmark = pytest.mark.app

PANEL = {
    "sampler": "Euler a",
    "schedule_type": "Automatic",
    "steps": 3,
    "cfg_scale": 6,
    "width": 64,
    "height": 64,
    "batch_count": 1,
    "batch_size": 1,
    "seed": 31,
    "clip_skip": 1,
}


@pytest.fixture(scope="module")
def server(plain_server: LaunchedServer) -> tuple[Client, Path]:
    return Client(plain_server.url, verbose=False), plain_server.outputs


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("modes-app-pictures")
    rng = np.random.default_rng(3)
    files = {
        "image": Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)),
        "empty_layer": Image.new("RGBA", (96, 80), (0, 0, 0, 0)),
        "small_mask": Image.new("L", (48, 40), 0),  # half size: must be resized
    }
    stroke = Image.new("RGBA", (96, 80), (0, 0, 0, 0))
    stroke.paste((255, 0, 255, 255), (20, 30, 50, 50))
    files["stroke_layer"] = stroke
    files["small_mask"].paste(255, (24, 0, 48, 40))  # the right half
    paths = {}
    for name, image in files.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    paths["huge"] = folder / "huge.png"
    Image.new("RGB", (4100, 4100), (1, 2, 3)).save(paths["huge"])  # over the 4096 x 4096 upload limit
    paths["broken"] = folder / "broken.png"
    paths["broken"].write_bytes(paths["image"].read_bytes()[:200])  # a truncated PNG
    return paths


def img2img(client: Client, image: Path | None, **overrides):
    values = {
        "checkpoint_name": "tiny-sd1.safetensors",
        "prompt": "a lighthouse at dusk",
        "negative": "",
        "image": handle_file(str(image)) if image else None,
        "resize": "Crop and resize",
        "denoising_strength": 0.55,
        **PANEL,
    }
    values.update(overrides)
    return client.predict(*values.values(), api_name="/img2img")


def editor(background: Path, *layers: Path) -> dict:
    return {
        "background": handle_file(str(background)),
        "layers": [handle_file(str(layer)) for layer in layers],
        "composite": handle_file(str(background)),
    }


def inpaint(client: Client, value: dict | None, mask: Path | None = None, **overrides):
    values = {
        "checkpoint_name": "tiny-sd1.safetensors",
        "prompt": "a red door",
        "negative": "",
        "image": value,
        "uploaded_mask": handle_file(str(mask)) if mask else None,
        "blur": 2,
        "pad": 32,
        "invert": "Inpaint masked",
        "area": "Whole picture",
        "content": "original",
        "strength": 0.8,
        **PANEL,
    }
    values.update(overrides)
    return client.predict(*values.values(), api_name="/inpaint")


def changed_columns(saved: Path, original: Path) -> np.ndarray:
    with Image.open(saved) as a, Image.open(original) as b:
        assert a.size == b.size
        diff = np.asarray(a.convert("RGB")).astype(int) != np.asarray(b.convert("RGB")).astype(int)
    return np.flatnonzero(diff.any(axis=(0, 2)))


def test_img2img_endpoint_saves_under_img2img_images_with_denoising_strength(server, pictures) -> None:
    client, outputs = server
    gallery, _preview, _progress, infotext, *_ = img2img(client, pictures["image"])
    assert len(gallery) == 1
    saved = sorted(outputs.glob("img2img-images/*/*-31.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (64, 64)
        fields = parse_infotext(image.text["parameters"])
    assert fields["Denoising strength"] == "0.55" and fields["Resize mode"] == "Crop and resize"
    assert parse_infotext(infotext)["Prompt"] == "a lighthouse at dusk"


def test_inpaint_endpoint_changes_only_the_painted_stroke(server, pictures) -> None:
    client, outputs = server
    _gallery, _preview, _progress, infotext, *_ = inpaint(
        client, editor(pictures["image"], pictures["stroke_layer"]), seed=41
    )
    fields = parse_infotext(infotext)
    assert fields["Mask blur"] == "2" and fields["Inpaint area"] == "Whole picture"
    assert fields["Masked content"] == "original" and fields["Denoising strength"] == "0.8"
    saved = sorted(outputs.glob("inpaint-images/*/*-41.png"))
    assert len(saved) == 1
    columns = changed_columns(saved[0], pictures["image"])
    assert columns.size and columns.min() >= 20 - 8 and columns.max() < 50 + 8


def test_an_uploaded_mask_of_another_size_replaces_painting(server, pictures) -> None:
    client, outputs = server
    inpaint(client, editor(pictures["image"]), pictures["small_mask"], seed=42, blur=0, area="Only masked", pad=8)
    saved = sorted(outputs.glob("inpaint-images/*/*-42.png"))
    with Image.open(saved[0]) as image:
        fields = parse_infotext(image.text["parameters"])
    assert fields["Inpaint area"] == "Only masked" and fields["Masked area padding"] == "8"
    assert changed_columns(saved[0], pictures["image"]).min() >= 48


def test_outpaint_grows_the_canvas_and_returns_it_to_the_editor(server, pictures) -> None:
    client, outputs = server
    result = client.predict(
        "tiny-sd1.safetensors",
        "more sky",
        "",
        editor(pictures["image"]),
        ["right", "down"],
        16,
        "edge",
        4,
        32,
        "Whole picture",
        0.9,
        *{**PANEL, "seed": 43}.values(),
        api_name="/outpaint",
    )
    _gallery, _preview, _progress, infotext, new_editor = result
    assert "Outpaint" in parse_infotext(infotext)
    with Image.open(new_editor["background"]) as background:
        assert background.size == (112, 96)
    with Image.open(sorted(outputs.glob("inpaint-images/*/*-43.png"))[0]) as saved:
        assert saved.size == (112, 96)


def test_bad_input_gives_a_clear_message_and_the_server_keeps_running(server, pictures) -> None:
    client, _ = server
    with pytest.raises(Exception, match="(?i)paint a mask first"):
        inpaint(client, editor(pictures["image"], pictures["empty_layer"]))
    with pytest.raises(Exception, match="No image"):
        img2img(client, None)
    with pytest.raises(Exception, match="No image"):
        inpaint(client, None)
    with pytest.raises(Exception, match="more than the"):
        img2img(client, pictures["huge"])
    with pytest.raises(Exception, match="damaged or incomplete"):
        img2img(client, pictures["broken"])
    with pytest.raises(Exception, match="at least one side"):
        client.predict(
            "tiny-sd1.safetensors", "", "", editor(pictures["image"]), [], 16, "edge", 4, 32, "Whole picture", 0.9,
            *PANEL.values(), api_name="/outpaint",
        )  # fmt: skip
    gallery, *_ = img2img(client, pictures["image"], seed=44)
    assert len(gallery) == 1
