"""Easel's own loop through the A1111 API, as real clients drive it: sd-backend-client (PyPI) with its defaults,
every sampler x schedule name A1111 lists, the RNG source override, the refiner, and the listing routes."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import requests
import sd_backend_client
from PIL import Image

from pipelines.metadata.infotext import parse_infotext
from tests.api_support import AUTH, PASSWORD, USER
from tests.server import LaunchedServer


@pytest.fixture(scope="module")
def url(auth_server: LaunchedServer) -> str:
    return auth_server.url


def txt2img(url: str, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64, "save_images": False, **fields}
    response = requests.post(f"{url}/sdapi/v1/txt2img", json=body, auth=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def picture(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)


def client(url: str) -> Any:
    return sd_backend_client.A1111Webservice(url, credentials_provider=lambda: (USER, PASSWORD))


def test_sd_backend_client_txt2img_with_its_defaults(url: str) -> None:
    """Its defaults are sampler euler_ancestral and scheduler ``normal``: A1111's lower-case schedule name."""
    params = sd_backend_client.DiffusionParams(prompt="a lighthouse", width=64, height=64, steps=3, seed=7)
    response = client(url).txt2img(params)
    assert len(response["images"]) == 1 and response["images"][0].size == (64, 64)
    assert response["info"] is not None


def test_sd_backend_client_inpaint_with_its_defaults(url: str) -> None:
    image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    params = sd_backend_client.DiffusionParams(prompt="a boat", width=64, height=64, steps=3, seed=7)
    response = client(url).img2img(image, mask, params)
    out = np.asarray(response["images"][0].convert("RGB"), dtype=np.int16)
    assert out.shape == (64, 64, 3)
    # outside the (blurred) mask the picture is the original's, exactly
    assert np.array_equal(out[:8, :8], np.asarray(image, dtype=np.int16)[:8, :8])


def test_listed_samplers_and_schedules_run_by_their_listed_names(url: str) -> None:
    samplers = requests.get(f"{url}/sdapi/v1/samplers", auth=AUTH, timeout=30).json()
    schedulers = requests.get(f"{url}/sdapi/v1/schedulers", auth=AUTH, timeout=30).json()
    assert len(samplers) == 20 and len(schedulers) == 12
    karras = next(s for s in schedulers if s["name"] == "karras")
    assert karras == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert next(s for s in schedulers if s["name"] == "sgm_uniform")["aliases"] == ["SGMUniform"]
    assert next(s for s in samplers if s["name"] == "DPM++ 2M")["options"] == {"scheduler": "karras"}
    names = [s["name"] for s in schedulers] + [s["label"] for s in schedulers]  # API names and labels alike
    for index, sampler in enumerate(samplers):
        schedule = names[(index * 5) % len(names)]
        info = json.loads(txt2img(url, sampler_name=sampler["name"], scheduler=schedule, steps=2)["info"])
        assert info["sampler_name"] == sampler["name"], schedule


def test_the_same_request_gives_the_same_picture_and_rng_is_overridable(url: str) -> None:
    first = txt2img(url, sampler_name="Euler a")
    again = txt2img(url, sampler_name="Euler a")
    assert np.array_equal(picture(first["images"][0]), picture(again["images"][0]))
    cpu = txt2img(url, sampler_name="Euler a", override_settings={"randn_source": "CPU"})
    assert not np.array_equal(picture(first["images"][0]), picture(cpu["images"][0]))
    assert "RNG: CPU" in json.loads(cpu["info"])["infotexts"][0]
    assert "RNG: NV" in json.loads(first["info"])["infotexts"][0]


def test_refiner_through_the_api(url: str) -> None:
    result = txt2img(
        url,
        override_settings={"sd_model_checkpoint": "tiny-sdxl"},
        refiner_checkpoint="tiny-sdxl",
        refiner_switch_at=0.5,
    )
    fields = parse_infotext(json.loads(result["info"])["infotexts"][0])
    assert fields["Refiner switch at"] == "0.5" and fields["Refiner"].startswith("tiny-sdxl")
    refused = requests.post(
        f"{url}/sdapi/v1/txt2img",
        json={"prompt": "x", "steps": 2, "width": 64, "height": 64, "refiner_checkpoint": "tiny-sdxl",
              "save_images": False, "override_settings": {"sd_model_checkpoint": "tiny-sd1"}},
        auth=AUTH,
        timeout=300,
    )  # fmt: skip
    assert refused.status_code == 422 and "same family" in refused.text
