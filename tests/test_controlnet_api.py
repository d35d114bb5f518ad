"""ControlNet through a launched server, as sd-webui-controlnet's clients drive it: its routes and shapes,
``alwayson_scripts.controlnet`` units on txt2img and img2img, sd-backend-client detecting it and generating with a
unit, refusals (server paths, pickles) that leave the server up, and the routes behind the login."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sd_backend_client
from PIL import Image
from sd_backend_client.api.shared_data.controlnet.controlnet_preprocessor import PreprocessorParams

from pipelines.metadata.infotext import parse_infotext
from pipelines.models.tiny_models import build_tiny_controlnet, save_controlnet_file
from tests.api_support import AUTH, PASSWORD, USER, b64, decode
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_controlnet import control_picture

pytestmark = pytest.mark.app


def write_controlnets(models: Path, tiny: TinyModels) -> None:
    folder = models / "ControlNet"
    unet = tiny.components("sd1")["unet"]
    save_controlnet_file(build_tiny_controlnet(unet, seed=3), folder / "control_tiny_sd15_canny.safetensors", "ldm")
    save_controlnet_file(build_tiny_controlnet(unet, seed=5), folder / "control_tiny_sd15_tile.safetensors", "ldm")


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("controlnet", auth="flag", prepare=lambda models: write_controlnets(models, tiny)) as s:
        yield s


def get(server: LaunchedServer, path: str, **params: Any) -> Any:
    response = requests.get(f"{server.url}{path}", params=params, auth=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def post(server: LaunchedServer, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = requests.post(f"{server.url}{path}", json=body, auth=AUTH, timeout=300)
    assert response.status_code == status, response.text
    return response.json()


def txt2img(server: LaunchedServer, *units: dict[str, Any], status: int = 200, **fields: Any) -> Any:
    body = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64, **fields}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": list(units)}}
    return post(server, "/sdapi/v1/txt2img", body, status)


def pixels(response: Any) -> np.ndarray:
    return np.asarray(decode(response["images"][0]).convert("RGB"), dtype=np.int16)


def unit(**values: Any) -> dict[str, Any]:
    return {"input_image": b64(control_picture()), "module": "none", "model": "control_tiny_sd15_canny"} | values


def test_routes_answer_with_sd_webui_controlnet_shapes(server: LaunchedServer) -> None:
    assert get(server, "/controlnet/version") == {"version": 3}
    models = get(server, "/controlnet/model_list")["model_list"]
    assert [m.split(" [")[0] for m in models] == ["control_tiny_sd15_canny", "control_tiny_sd15_tile"]
    assert all(len(m.split(" [")[1]) == 9 for m in models)  # "name [8 hex]"
    modules = get(server, "/controlnet/module_list")
    assert {"none", "canny", "invert", "tile_resample"} <= set(modules["module_list"])
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert [s["name"] for s in canny["sliders"]] == ["Resolution", "Low Threshold", "High Threshold"]
    types = get(server, "/controlnet/control_types")["control_types"]
    assert types["Canny"]["default_model"] == models[0] and types["All"]["default_option"] == "none"
    assert get(server, "/controlnet/settings") == {"control_net_unit_count": 3, "control_net_max_models_num": 3}


def test_detect_runs_a_preprocessor(server: LaunchedServer) -> None:
    body = {
        "controlnet_module": "canny",
        "controlnet_input_images": [b64(control_picture(128))],
        "controlnet_processor_res": 256,
        "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200,
    }
    result = post(server, "/controlnet/detect", body)
    edges = np.asarray(decode(result["images"][0]).convert("L"))
    assert result["info"] == "Success" and edges.shape == (256, 256)
    assert set(np.unique(edges)) == {0, 255} and 0.005 < (edges > 0).mean() < 0.1
    refused = post(server, "/controlnet/detect", body | {"controlnet_input_images": ["/etc/passwd"]}, 422)
    assert "never as a path" in refused["detail"]
    assert post(server, "/controlnet/detect", body | {"controlnet_module": "openpose"}, 422)


def test_alwayson_units_on_txt2img(server: LaunchedServer) -> None:
    plain = pixels(txt2img(server))
    assert np.array_equal(pixels(txt2img(server, unit(weight=0))), plain)
    assert np.array_equal(pixels(txt2img(server, unit(guidance_end=0))), plain)
    controlled = txt2img(server, unit(module="canny", threshold_a=50, threshold_b=120, pixel_perfect=True))
    assert np.abs(pixels(controlled) - plain).mean() > 0.5
    info = parse_infotext(json.loads(controlled["info"])["infotexts"][0])
    assert info["ControlNet 0"].startswith("Module: canny, Model: control_tiny_sd15_canny [")
    both = txt2img(server, unit(), unit(model="control_tiny_sd15_tile [00000000]", weight=0.7))
    assert np.abs(pixels(both) - pixels(txt2img(server, unit()))).mean() > 0.5


def test_img2img_unit_without_image_uses_the_init_image(server: LaunchedServer) -> None:
    body = {"prompt": "a boat", "seed": 3, "steps": 3, "width": 64, "height": 64, "denoising_strength": 0.8}
    body["init_images"] = [b64(control_picture())]
    plain = pixels(post(server, "/sdapi/v1/img2img", body))
    with_unit = body | {"alwayson_scripts": {"controlnet": {"args": [{"model": "control_tiny_sd15_canny"}]}}}
    assert np.abs(pixels(post(server, "/sdapi/v1/img2img", with_unit)) - plain).mean() > 0.5


def test_refusals_are_clear_and_leave_the_server_up(server: LaunchedServer) -> None:
    path = txt2img(server, unit(input_image="/etc/passwd"), status=422)
    assert "never as a path on the server" in path["detail"]
    pickle = txt2img(server, unit(ipadapter_input=["gASVAAAA"]), status=422)
    assert "ipadapter_input is refused" in pickle["detail"]
    missing = txt2img(server, unit(model="nope"), status=422)
    assert "'nope' not found" in missing["detail"] and "control_tiny_sd15_canny" in missing["detail"]
    too_many = txt2img(server, unit(), unit(), unit(), unit(), status=422)
    assert "takes 3 args" in too_many["detail"]
    assert get(server, "/controlnet/version") == {"version": 3}
    assert "switched off" not in server.log.read_text()  # a user's mistake never disables the extension


def test_routes_need_the_login(server: LaunchedServer) -> None:
    for path in ("/controlnet/model_list", "/controlnet/version"):
        assert requests.get(f"{server.url}{path}", timeout=30).status_code == 401
    assert requests.post(f"{server.url}/controlnet/detect", json={}, timeout=30).status_code == 401


def test_sd_backend_client_detects_controlnet_and_generates_with_a_unit(server: LaunchedServer) -> None:
    client = sd_backend_client.A1111Webservice(server.url, credentials_provider=lambda: (USER, PASSWORD))
    assert client.get_capabilities().controlnet
    assert client.get_controlnet_version() == 3
    names = client.get_controlnet_models().model_list
    preprocessors = {p.name: p for p in client.get_controlnet_preprocessors()}
    canny = preprocessors["canny"]
    keys = {p.key for p in canny.parameters}
    assert {"threshold_a", "threshold_b", "processor_res", "resize_mode", "control_mode"} <= keys, keys
    chosen = PreprocessorParams(typedef=canny, parameter_values={"threshold_a": 50, "threshold_b": 120})
    control = sd_backend_client.ControlNetUnit(
        image=control_picture(), model=sd_backend_client.ControlNetModel(names[0]), preprocessor=chosen
    )
    params = sd_backend_client.DiffusionParams(prompt="a lighthouse", width=64, height=64, steps=3, seed=7)
    plain = client.txt2img(params)["images"][0]
    params.controlnet_units = [control]
    controlled = client.txt2img(params)["images"][0]
    assert isinstance(controlled, Image.Image) and controlled.size == (64, 64)
    diff = np.abs(np.asarray(controlled.convert("RGB"), dtype=np.int16) - np.asarray(plain.convert("RGB"))).mean()
    assert diff > 0.5


def test_model_free_reference_and_a_base64_mask_through_alwayson(server: LaunchedServer) -> None:
    plain = pixels(txt2img(server))
    ref = txt2img(server, {"input_image": b64(control_picture()), "module": "reference_only", "model": "None"})
    assert np.abs(pixels(ref) - plain).mean() > 0.5
    info = parse_infotext(json.loads(ref["info"])["infotexts"][0])
    assert info["ControlNet 0"].startswith("Module: reference_only, Model: None")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    kept = pixels(txt2img(server, unit(module="inpaint_only", mask_image=b64(mask))))
    ring = np.ones((64, 64), dtype=bool)
    ring[8:56, 8:56] = False  # beyond the grown, feathered mask edge: the control picture itself
    assert np.array_equal(kept[ring], np.asarray(control_picture(), dtype=np.int16)[ring])
    refused = txt2img(server, unit(module="inpaint_only", mask="/etc/passwd"), status=422)
    assert "never as a path on the server" in refused["detail"]
