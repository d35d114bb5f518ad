"""The A1111-compatible REST API against a launched server: the `webuiapi` client as users run it, plus raw HTTP."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from pipelines.metadata.infotext import parse_infotext
from tests.api_support import AUTH, PASSWORD, USER, b64, decode, picture_and_mask
from tests.api_support import tiny_txt2img as payload
from tests.server import LaunchedServer
from tests.threads import CheckedThread
from webui.api import MAX_REQUEST_PIXELS

pytestmark = pytest.mark.app
TIMEOUT = 120


@pytest.fixture(scope="module")
def server(auth_server: LaunchedServer) -> tuple[str, Path]:
    """The session's shared server with a login (``--queue-size 2 --max-upload-mb 2``; see conftest)."""
    return auth_server.url, auth_server.outputs


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    url, _ = server
    return webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", username=USER, password=PASSWORD, steps=3)


def post(url: str, path: str, body: object = None, **kw):
    """JSON as Python writes it, NaN and Infinity literals included (``requests``' own ``json=`` refuses them)."""
    if body is None:
        return requests.post(f"{url}/sdapi/v1/{path}", auth=AUTH, timeout=TIMEOUT, **kw)
    data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    return requests.post(f"{url}/sdapi/v1/{path}", data=data, headers=headers, auth=AUTH, timeout=TIMEOUT, **kw)


def get(url: str, path: str, **kw):
    return requests.get(f"{url}/sdapi/v1/{path}", auth=AUTH, timeout=TIMEOUT, **kw)


# -- webuiapi, unchanged, as a real client ----------------------------------------------------------------
def test_webuiapi_txt2img_returns_images_info_and_saves(api: webuiapi.WebUIApi, server) -> None:
    _, outputs = server
    before = set(outputs.glob("txt2img-images/*/*.png"))  # the shared server's folder holds other tests' images
    result = api.txt2img(prompt="a red boat", width=64, height=64, seed=11, batch_size=2, save_images=True)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    info = result.info
    assert info["all_seeds"] == [11, 12] and info["seed"] == 11
    assert info["sd_model_name"] == "tiny-sd1" and len(info["sd_model_hash"]) == 10
    assert info["width"] == 64 and info["sampler_name"] == "Euler a" and info["version"].startswith("easel")
    assert parse_infotext(info["infotexts"][1])["Seed"] == "12"
    assert result.parameters["prompt"] == "a red boat"
    saved = sorted(p.name.split("-", 1)[1] for p in set(outputs.glob("txt2img-images/*/*.png")) - before)
    assert saved == ["11.png", "12.png"]
    # the returned PNG carries its parameters, and png-info reads them back
    read = api.png_info(result.images[0])
    assert "Seed: 11" in read.info
    assert read.parameters["Seed"] == "11" and read.parameters["Prompt"] == "a red boat"


def test_webuiapi_img2img_with_a_mask_keeps_the_rest_of_the_picture(api: webuiapi.WebUIApi) -> None:
    picture, mask = picture_and_mask()
    outside = np.asarray(mask) == 0
    for fill, full_res in ((0, True), (1, False), (2, True), (3, False)):
        result = api.img2img(
            images=[picture],
            mask_image=mask,
            prompt="a yellow sun",
            width=64,
            height=64,
            seed=5,
            mask_blur=0,
            inpainting_fill=fill,
            inpaint_full_res=full_res,
            inpaint_full_res_padding=8,
            denoising_strength=0.8,
        )
        out = np.asarray(result.images[0].convert("RGB"))
        assert out.shape == (64, 64, 3)
        assert (out[outside] == np.asarray(picture)[outside]).all(), f"fill {fill}: pixels outside the mask changed"
        assert not (out[~outside] == np.asarray(picture)[~outside]).all()
        assert "Mask blur: 0" in result.info["infotexts"][0] or "Mask blur" not in result.info["infotexts"][0]
    inverted = api.img2img(
        images=[picture], mask_image=mask, width=64, height=64, seed=5, mask_blur=0, inpainting_mask_invert=1
    )
    out = np.asarray(inverted.images[0].convert("RGB"))
    assert (out[~outside] == np.asarray(picture)[~outside]).all()


def test_plain_img2img_accepts_jpeg_and_webp_with_or_without_data_prefix(server) -> None:
    url, _ = server
    picture, _ = picture_and_mask(96)
    for fmt, prefix in (("JPEG", True), ("WEBP", False), ("PNG", True)):
        body = {**payload(), "init_images": [b64(picture, fmt, prefix)], "denoising_strength": 0.5, "resize_mode": 1}
        response = post(url, "img2img", body)
        assert response.status_code == 200, response.text
        data = response.json()
        assert decode(data["images"][0]).size == (64, 64)
        assert data["parameters"]["init_images"] is None  # as A1111 unless include_init_images
        assert json.loads(data["info"])["denoising_strength"] == 0.5


def test_model_switch_through_options(api: webuiapi.WebUIApi, server) -> None:
    url, _ = server
    titles = api.util_get_model_names()
    assert any(t.startswith("tiny-sd1.safetensors [") for t in titles) and "tiny-sd1-diffusers" in titles
    api.set_options({"sd_model_checkpoint": "tiny-sd1-diffusers"})  # by folder name
    assert api.util_get_current_model() == "tiny-sd1-diffusers"
    assert api.txt2img(prompt="x", width=64, height=64).info["sd_model_name"] == "tiny-sd1-diffusers"
    sd1_title = next(t for t in titles if t.startswith("tiny-sd1.safetensors"))
    api.util_set_model(sd1_title, find_closest=False)  # webuiapi's own helper, with an exact title
    assert api.util_get_current_model().startswith("tiny-sd1.safetensors [")
    api.set_options({"sd_model_checkpoint": "sub/tiny-sdxl.safetensors"})
    assert get(url, "options").json()["sd_model_checkpoint"].startswith("sub/tiny-sdxl.safetensors")
    api.set_options({"sd_model_checkpoint": "tiny-sd1"})  # by stem
    assert get(url, "options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [")
    # a per-request override switches too
    body = payload(override_settings={"sd_model_checkpoint": "tiny-sd1-diffusers"})
    assert json.loads(post(url, "txt2img", body).json()["info"])["sd_model_name"] == "tiny-sd1-diffusers"
    # ... for that request only (A1111's override_settings_restore_afterwards, true by default)
    assert get(url, "options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors [")
    sticky = payload(override_settings={"sd_model_checkpoint": "tiny-sd1-diffusers"})
    assert post(url, "txt2img", {**sticky, "override_settings_restore_afterwards": False}).status_code == 200
    assert get(url, "options").json()["sd_model_checkpoint"] == "tiny-sd1-diffusers"
    api.set_options({"sd_model_checkpoint": "tiny-sd1.safetensors"})
    bad = post(url, "options", {"sd_model_checkpoint": "no-such-model"})
    assert bad.status_code == 422 and "no checkpoint named" in bad.json()["detail"]


def test_progress_and_interrupt(api: webuiapi.WebUIApi, server) -> None:
    url, _ = server
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    box: dict[str, object] = {}

    def long_job() -> None:
        box["result"] = post(url, "txt2img", payload(steps=150, n_iter=3))

    thread = CheckedThread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] >= 2 and progress["current_image"]:
            seen = progress
            break
        time.sleep(0.05)
    assert seen is not None, "no progress reported"
    assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 150 and seen["state"]["job_count"] == 1
    assert seen["eta_relative"] > 0 and seen["state"]["job_timestamp"] != "0"
    assert decode(seen["current_image"]).size[0] > 0
    assert requests.get(f"{url}/sdapi/v1/progress?skip_current_image=true", auth=AUTH).json()["current_image"] is None
    api.interrupt()
    thread.join(TIMEOUT)
    response = box["result"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and len(response.json()["images"]) <= 1
    assert api.get_progress()["state"]["job_count"] == 0


def test_listing_endpoints_have_a1111_shapes(api: webuiapi.WebUIApi, server) -> None:
    url, _ = server
    models = api.get_sd_models()
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])
    assert "Euler a" in api.util_get_sampler_names() and "DPM++ 2M" in api.util_get_sampler_names()
    schedulers = api.get_schedulers()
    assert {"name": "karras", "label": "Karras"}.items() <= next(s for s in schedulers if s["name"] == "karras").items()
    assert {"None", "Lanczos", "Nearest"} <= {u["name"] for u in api.get_upscalers()}
    assert [lora["name"] for lora in api.get_loras()] == ["tiny-style"]
    assert [vae["model_name"] for vae in api.get_sd_vae()] == ["tiny-vae.safetensors"]
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    scripts = api.get_scripts()  # the built-in extensions' scripts (A1111's lower-cased titles)
    assert "x/y/z plot" in scripts["txt2img"] and "x/y/z plot" in scripts["img2img"]
    memory = api.get_memory()
    assert memory["ram"]["total"] >= memory["ram"]["free"] > 0 and "cuda" in memory
    flags = api.get_cmd_flags()
    assert flags["max_upload_mb"] == 2 and "auth" not in flags and PASSWORD not in json.dumps(flags)
    options = api.get_options()
    assert options["sd_model_checkpoint"].startswith("tiny-sd1") and options["CLIP_stop_at_last_layers"] == 1
    assert post(url, "refresh-checkpoints").status_code == 200
    assert post(url, "skip").status_code == 200 and post(url, "interrupt").status_code == 200  # idle: no-ops


def test_extras_upscale(api: webuiapi.WebUIApi, server) -> None:
    url, _ = server
    picture, _ = picture_and_mask(32)
    assert api.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=2).image.size == (64, 64)
    body = {
        "image": b64(picture, prefix=True),
        "resize_mode": 1,
        "upscaling_resize_w": 40,
        "upscaling_resize_h": 24,
        "upscaler_1": "Nearest",
    }
    response = post(url, "extra-single-image", body)
    assert response.status_code == 200 and decode(response.json()["image"]).size == (40, 24)
    assert post(url, "extra-single-image", {**body, "upscaler_1": "R-ESRGAN 4x+"}).status_code == 422
    images = [{"data": b64(picture), "name": "a"}]
    batch = post(url, "extra-batch-images", {"imageList": images, "upscaler_1": "Lanczos"})
    assert batch.status_code == 200 and decode(batch.json()["images"][0]).size == (64, 64)


def test_extras_batch_is_bounded_by_decoded_pixels_per_request(server) -> None:
    """Three solid 4096x4096 PNGs are a small body but 50 M decoded pixels: refused from their headers alone."""
    url, _ = server
    buffer = io.BytesIO()
    Image.new("RGB", (4096, 4096), (20, 90, 200)).save(buffer, format="PNG")
    big = base64.b64encode(buffer.getvalue()).decode()
    images = [{"data": big, "name": str(i)} for i in range(3)]
    response = post(url, "extra-batch-images", {"imageList": images, "upscaler_1": "Nearest", "upscaling_resize": 1})
    assert response.status_code == 413, response.text[:300]
    detail = response.json()["detail"]
    assert "imageList[2]" in detail and f"{MAX_REQUEST_PIXELS:,}" in detail
    small = [{"data": b64(picture_and_mask(32)[0]), "name": str(i)} for i in range(3)]
    batch = post(url, "extra-batch-images", {"imageList": small, "upscaler_1": "Nearest", "upscaling_resize": 2})
    assert batch.status_code == 200 and [decode(im).size for im in batch.json()["images"]] == [(64, 64)] * 3


def test_a_broken_styles_file_is_reported_and_generation_goes_on(server) -> None:
    """A stray quote makes one 220 KB field (over csv's 128 KiB limit): reported, skipped, never rewritten."""
    url, outputs = server
    styles = outputs.parent / "styles.csv"  # beside the models folder, as A1111 keeps it
    rows = [f"style{i},a painting of {{prompt}} {'in detail ' * 10},lowres" for i in range(2000)]
    rows[3] = 'broken,"a stray quote, {prompt},lowres'
    text = "name,prompt,negative_prompt\n" + "\n".join(rows) + "\n"
    styles.write_text(text)
    try:
        listed = get(url, "prompt-styles")
        assert listed.status_code == 422 and "styles.csv" in listed.json()["detail"]
        assert "line 5" in listed.json()["detail"]
        response = post(url, "txt2img", payload(styles=["style1"]))
        assert response.status_code == 200, response.text[:300]
        info = json.loads(response.json()["info"])
        assert info["prompt"] == "a red boat" and any("styles.csv" in w for w in info["warnings"])
        assert styles.read_text() == text  # kept as it is on disk
        styles.write_text('name,prompt,negative_prompt\nfancy,"masterpiece, {prompt}",lowres\n')
        assert get(url, "prompt-styles").json() == [
            {"name": "fancy", "prompt": "masterpiece, {prompt}", "negative_prompt": "lowres"}
        ]
    finally:
        styles.unlink(missing_ok=True)


def test_a_full_queue_answers_429_at_once(api: webuiapi.WebUIApi, server) -> None:
    """The fixture's --queue-size 2: one job running and one waiting fill the line; a third is turned away."""
    url, _ = server
    box: dict[str, requests.Response] = {}

    def send(name: str, body: dict[str, object]) -> None:
        box[name] = post(url, "txt2img", body)

    def job_count() -> int:
        return api.get_progress()["state"]["job_count"]

    running = CheckedThread(target=send, args=("running", payload(steps=150, n_iter=3)))
    waiting = CheckedThread(target=send, args=("waiting", payload()))
    try:
        running.start()
        deadline = time.monotonic() + 60
        while api.get_progress()["state"]["sampling_step"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting.start()
        while job_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job_count() == 2
        third = requests.post(f"{url}/sdapi/v1/txt2img", json=payload(), auth=AUTH, timeout=20)
        assert third.status_code == 429, third.text[:300]
        assert "queue is full (2 jobs" in third.json()["detail"]
    finally:
        api.interrupt()
        running.join(TIMEOUT)
        waiting.join(TIMEOUT)
    assert box["running"].status_code == 200 and box["waiting"].status_code == 200


def test_nulls_and_unknown_fields_are_accepted(server) -> None:
    url, _ = server
    body = payload(seed=None, negative_prompt=None, sampler_name=None, scheduler="karras", styles=None)
    body |= {"some_extension_field": {"x": 1}, "alwayson_scripts": {}, "override_settings": None, "sampler_index": None}
    response = post(url, "txt2img", body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["sampler_name"] == "Euler" and "Schedule type: Karras" in info["infotexts"][0]
    assert response.json()["parameters"]["some_extension_field"] == {"x": 1}
    sampler = post(url, "txt2img", payload(sampler_name="DPM++ 2M Karras"))
    assert sampler.status_code == 200 and "Sampler: DPM++ 2M, Schedule type: Karras" in sampler.text


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


INF, NAN = float("inf"), float("nan")  # requests writes them as the JSON literals Infinity and NaN


def _bomb_png() -> bytes:
    """A valid PNG header that claims 30000x30000 pixels, with nothing behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("txt2img", payload(width=70), 422, "multiple of 8"),
        ("txt2img", payload(steps="many"), 422, "steps"),
        ("txt2img", payload(steps=0), 422, "Steps"),
        ("txt2img", payload(sampler_name="Nope Sampler"), 422, "sampler"),
        ("txt2img", payload(scheduler="turbo"), 422, "schedule type"),
        ("txt2img", payload(seed=2**40), 422, "Seed"),
        ("txt2img", payload(override_settings={"sd_model_checkpoint": "missing"}), 422, "no checkpoint named"),
        ("txt2img", payload(script_name="no such script"), 422, "script 'no such script' not found"),
        ("txt2img", payload(script_name="x/y/z plot", script_args=[99]), 422, "axis type 99 is out of range"),
        ("txt2img", [1, 2, 3], 422, ""),
        ("img2img", payload(), 422, "init_images"),
        ("img2img", payload(init_images=["not base64 at all!"]), 422, "base64"),
        ("img2img", payload(init_images=[b64(Image.new("RGB", (8, 8)))[:40]]), 422, "image"),
        ("img2img", payload(init_images=["aGVsbG8gd29ybGQ="]), 422, "not an image"),
        ("img2img", payload(init_images=["data:text/plain,hello"]), 422, "base64"),
        ("img2img", payload(init_images=[None]), 422, ""),
        ("img2img", payload(init_images=[b64(Image.new("RGB", (8, 8)))], denoising_strength=3), 422, "Denoising"),
        ("img2img", payload(init_images=[b64(Image.new("RGB", (8, 8)))], mask="@@@"), 422, "mask"),
        ("png-info", {"image": "%%%"}, 422, "base64"),
        ("options", {"sd_model_checkpoint": 5}, 422, "sd_model_checkpoint"),
        ("extra-single-image", {"image": ""}, 422, "no image"),
        ("extra-single-image", {"image": b64(Image.new("RGB", (8, 8))), "upscaling_resize": 1000}, 422, "between"),
        # a prompt the schedule parser cannot nest that deep (was a RecursionError: 500)
        ("txt2img", payload(prompt="[" * 1000), 422, "nested more than"),
        # NaN and Infinity, which Python's json accepts, in every kind of numeric field (some were 500s)
        ("txt2img", payload(override_settings={"CLIP_stop_at_last_layers": INF}), 422, "Infinity"),
        ("txt2img", payload(override_settings={"CLIP_stop_at_last_layers": NAN}), 422, "NaN"),
        ("txt2img", payload(override_settings={"CLIP_stop_at_last_layers": 2.5}), 422, "whole number"),
        ("txt2img", payload(steps=INF), 422, "steps"),
        ("txt2img", payload(cfg_scale=NAN), 422, "cfg_scale"),
        ("txt2img", payload(width=-INF), 422, "width"),
        ("txt2img", payload(seed=NAN), 422, "seed"),
        ("txt2img", payload(denoising_strength=NAN), 422, "denoising_strength"),
        ("txt2img", payload(subseed_strength=INF, hr_scale=1.5), 422, "subseed_strength"),
        ("txt2img", payload(eta=NAN), 422, "eta"),
        ("txt2img", payload(an_extension={"weights": [1.0, INF]}), 422, "an_extension.weights.1"),
        ("txt2img", payload(an_extension=_nested(400)), 422, "nested more than"),
        ("img2img", payload(init_images=[b64(Image.new("RGB", (8, 8)))], denoising_strength=INF), 422, "Infinity"),
        ("img2img", payload(init_images=[b64(Image.new("RGB", (8, 8)))], mask_blur=NAN), 422, "mask_blur"),
        ("extra-single-image", {"image": b64(Image.new("RGB", (8, 8))), "upscaling_resize": NAN}, 422, "NaN"),
        ("extra-single-image", {"image": b64(Image.new("RGB", (8, 8))), "upscaling_resize_w": INF}, 422, "Infinity"),
        ("options", {"an_extension_setting": NAN}, 422, "NaN"),
        ("options", {"CLIP_stop_at_last_layers": INF}, 422, "Infinity"),
        # options are kept in memory: bounded in number, key length and value size
        ("options", {"k" * 1000: 1}, 422, "longer than"),
        ("options", {"big": "x" * 100_000}, 413, "KiB"),
        ("options", {f"setting_{i}": i for i in range(3000)}, 413, "settings"),
    ],
)
def test_bad_input_is_a_json_4xx(server, path: str, body: object, status: int, message: str) -> None:
    url, _ = server
    response = post(url, path, body)
    assert response.status_code == status, response.text
    data = response.json()
    assert {"error", "detail"} <= set(data)
    assert message.lower() in json.dumps(data).lower()


def test_malformed_bodies_and_dangerous_images(server) -> None:
    url, _ = server
    raw = requests.post(f"{url}/sdapi/v1/txt2img", data=b"{not json", auth=AUTH, timeout=TIMEOUT)
    assert raw.status_code == 422 and raw.json()["error"] == "RequestValidationError"
    bomb = base64.b64encode(_bomb_png()).decode()
    response = post(url, "img2img", payload(init_images=[bomb]))
    assert response.status_code == 422 and "pixels" in response.json()["detail"]
    truncated = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(truncated, format="PNG")
    cut = base64.b64encode(truncated.getvalue()[: len(truncated.getvalue()) // 2]).decode()
    response = post(url, "img2img", payload(init_images=[cut]))
    assert response.status_code == 422 and "damaged" in response.json()["detail"]
    too_big = {"prompt": "x" * (3 * 1024 * 1024)}  # over --max-upload-mb 2
    response = post(url, "txt2img", too_big)
    assert response.status_code == 413 and "larger" in response.json()["detail"]


def test_openapi_and_docs(server) -> None:
    url, _ = server
    schema = requests.get(f"{url}/openapi.json", auth=AUTH, timeout=TIMEOUT).json()
    for path in ("txt2img", "img2img", "progress", "options", "sd-models", "png-info", "extra-single-image"):
        assert f"/sdapi/v1/{path}" in schema["paths"]
    docs = requests.get(f"{url}/docs", auth=AUTH, timeout=TIMEOUT)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_ui_login_uses_the_same_credentials(server) -> None:
    from gradio_client import Client

    from tests.test_app import txt2img

    url, _ = server
    client = Client(url, auth=AUTH, verbose=False)
    gallery, *_ = txt2img(client, batch_size=1, checkpoint_name="tiny-sd1.safetensors")
    assert len(gallery) == 1
    with pytest.raises(ValueError):
        Client(url, auth=(USER, "wrong"), verbose=False)


# -- without credentials (loopback only) -----------------------------------------------------------------------
def test_api_without_auth(plain_server: LaunchedServer) -> None:
    url = plain_server.url
    api = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", steps=2)
    assert api.txt2img(prompt="x", width=64, height=64, seed=3).info["all_seeds"] == [3]
    assert requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{url}/sdapi/v1/options", headers={"Host": "evil.example"}).status_code == 421


def test_infotext_field_fills_what_the_payload_leaves_unset(server) -> None:
    url, _ = server
    text = (
        "a (glass:1.2) bird\nNegative prompt: blurry\n"
        "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 321, Size: 64x64, "
        "Model: tiny-sd1, Clip skip: 2"
    )
    response = post(url, "txt2img", {"infotext": text, "steps": 2, "save_images": False})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    fields = parse_infotext(info["infotexts"][0])
    assert fields["Prompt"] == "a (glass:1.2) bird" and fields["Negative prompt"] == "blurry"
    assert fields["Steps"] == "2"  # given explicitly: the payload wins
    assert fields["Seed"] == "321" and fields["Size"] == "64x64" and fields["CFG scale"] == "4.5"
    assert fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras" and fields["Clip skip"] == "2"
    assert fields["Model"] == "tiny-sd1"


def _write_tiny_vae(folder: Path, name: str) -> Path:
    """A real, loadable VAE (the fixture's ``tiny-vae.safetensors`` is only bytes to list)."""
    from safetensors.torch import save_file

    from pipelines.models.ldm_layout import vae_to_ldm
    from pipelines.models.tiny_models import build_tiny_components

    state = build_tiny_components("sd1", seed=7)["vae"].state_dict()
    path = folder / name
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(state).items()}, str(path))
    return path


def test_info_carries_variation_seeds_vae_and_styles_the_engine_used(server) -> None:
    url, outputs = server
    response = post(url, "txt2img", payload(batch_size=2, seed=5, subseed=7, subseed_strength=0.5))
    assert response.status_code == 200, response.text[:300]
    info = json.loads(response.json()["info"])
    assert (info["seed"], info["all_seeds"]) == (5, [5, 6])
    assert (info["subseed"], info["all_subseeds"], info["subseed_strength"]) == (7, [7, 8], 0.5)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"], info["sd_vae_name"]) == (-1, -1, None)
    styles = outputs.parent / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nfancy,"masterpiece, {prompt}",lowres\n')
    vae = _write_tiny_vae(outputs.parent / "models" / "VAE", "real-tiny.vae.safetensors")
    try:
        body = payload(styles=["fancy"], override_settings={"sd_vae": vae.name}, seed_resize_from_w=48)
        response = post(url, "txt2img", {**body, "seed_resize_from_h": 80})
        assert response.status_code == 200, response.text[:300]
        info = json.loads(response.json()["info"])
        assert info["sd_vae_name"] == vae.name and len(info["sd_vae_hash"]) == 10
        assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 80)
        assert info["styles"] == ["fancy"] and info["all_prompts"] == ["masterpiece, a red boat"]
        assert info["all_negative_prompts"] == ["lowres"]
    finally:
        styles.unlink(missing_ok=True)
        vae.unlink()


def test_options_write_engine_settings_through_one_checked_writer(server) -> None:
    url, outputs = server
    before = get(url, "options").json()
    vae = _write_tiny_vae(outputs.parent / "models" / "VAE", "global-tiny.vae.safetensors")
    try:
        assert post(url, "options", {"sd_vae": "global-tiny.vae", "sd_checkpoint_cache": 3}).status_code == 200
        options = get(url, "options").json()
        assert (options["sd_vae"], options["sd_checkpoint_cache"]) == (vae.name, 3)  # the file's own name
        info = json.loads(post(url, "txt2img", payload()).json()["info"])
        assert info["sd_vae_name"] == vae.name
        bad = post(url, "options", {"sd_vae": "no-such-vae", "show_progress_every_n_steps": 2})
        assert bad.status_code == 422 and "no VAE named 'no-such-vae'" in bad.json()["detail"]
        assert get(url, "options").json()["show_progress_every_n_steps"] == before["show_progress_every_n_steps"]
        for key, value in (("show_progress_every_n_steps", -1), ("sd_checkpoint_cache", 1000), ("samples_save", "x")):
            bad = post(url, "options", {key: value})
            assert bad.status_code == 422 and key in bad.json()["detail"], bad.text
        assert post(url, "options", {"sd_vae": "None"}).status_code == 200
        assert get(url, "options").json()["sd_vae"] == "Automatic"
    finally:
        keys = ("sd_vae", "sd_checkpoint_cache", "show_progress_every_n_steps", "samples_save")
        post(url, "options", {key: before[key] for key in keys})
        vae.unlink()
