"""The launched server, driven through gradio_client like a script would."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from pipelines.metadata.infotext import parse_infotext
from tests.server import LaunchedServer

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def server(plain_server: LaunchedServer) -> tuple[str, Path]:
    return plain_server.url, plain_server.outputs


def txt2img(client: Client, **overrides):
    values = {
        "checkpoint_name": "tiny-sd1.safetensors",
        "prompt": "a watercolor boat",
        "negative": "",
        "sampler": "Euler a",
        "schedule_type": "Automatic",
        "steps": 3,
        "cfg_scale": 6,
        "width": 64,
        "height": 64,
        "batch_count": 1,
        "batch_size": 2,
        "seed": 77,
        "clip_skip": 1,
    }
    values.update(overrides)
    return client.predict(*values.values(), api_name="/txt2img")


def test_txt2img_through_gradio_client_saves_images_with_metadata(server) -> None:
    url, outputs = server
    client = Client(url, verbose=False)
    before = set(outputs.glob("txt2img-images/*/*.png"))  # the shared server's folder holds other tests' images
    gallery, _preview, _progress, infotext, *_ = txt2img(client)
    assert len(gallery) == 2
    saved = sorted(set(outputs.glob("txt2img-images/*/*.png")) - before)
    assert [p.name.split("-", 1)[1] for p in saved] == ["77.png", "78.png"]
    with Image.open(saved[0]) as image:
        assert image.size == (64, 64)
        fields = parse_infotext(image.text["parameters"])
    assert fields["Prompt"] == "a watercolor boat" and fields["Seed"] == "77"
    assert parse_infotext(infotext)["Seed"] == "77"


def test_bad_input_is_reported_and_server_keeps_running(server) -> None:
    url, _ = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="multiple of 8"):
        txt2img(client, width=70)
    with pytest.raises(Exception, match="no checkpoint named"):
        txt2img(client, checkpoint_name="not-a-model")
    gallery, *_ = txt2img(client, batch_size=1)
    assert len(gallery) == 1


def test_png_info_endpoint_reads_parameters(server, tmp_path: Path) -> None:
    url, outputs = server
    client = Client(url, verbose=False)
    txt2img(client, batch_size=1, seed=5)
    from gradio_client import handle_file

    saved = sorted(outputs.glob("txt2img-images/*/*-5.png"))[-1]
    text, fields = client.predict(handle_file(str(saved)), api_name="/png_info")
    assert "Seed: 5" in text and fields["Seed"] == "5"
