"""History and the shared queue on a launched server with two logins (ann is --admin, bob is not).

API: ``/easel/history`` pages and filters an A1111-shaped outputs folder, serves only images inside it, and moves
deletions to the trash; ``/easel/queue`` shows bob his own job in full and ann's as "another user", refuses his
cancelling hers, lets ann (admin) cancel his. Browser: the History tab and the queue panel, with screenshots.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from pipelines.metadata.infotext import format_infotext
from tests.api_support import AUTH, tiny_txt2img
from tests.browser import browser_page, set_number
from tests.server import LaunchedServer

pytestmark = pytest.mark.app
TIMEOUT = 60
BOB = ("bob", "other")
SCREENSHOTS = Path(os.environ.get("EASEL_SCREENSHOTS", "/tmp/easel-screenshots"))
COLOURS = ((220, 60, 50), (40, 150, 220), (240, 200, 40), (90, 190, 90), (160, 80, 200), (240, 140, 40))


def picture(index: int, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    draw.ellipse((12, 12, size - 12, size - 12), fill=COLOURS[(index + 2) % len(COLOURS)])
    draw.text((size // 2 - 6, size // 2 - 6), str(index), fill=(0, 0, 0))
    return image


def write_a1111_outputs(outputs: Path, count: int = 30) -> list[str]:
    """Outputs as A1111/Forge leave them: dated folders per mode, grids, an extras folder; mtimes one second apart."""
    made: list[str] = []
    start = time.time() - 3600
    for i in range(count):
        folder = ("txt2img-images/2024-05-01", "img2img-images/2024-05-02", "txt2img-grids/2024-05-01")[i % 3]
        name = f"grid-{i:04d}.png" if "grids" in folder else f"{i:05d}-{500 + i}.png"
        model = ("v1-5-pruned", "dreamshaper_8")[i % 2]
        prompt = f"{('lighthouse at dusk', 'fox in snow', 'teapot still life')[i % 3]}, study {i}"
        params = {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": 7, "Seed": 500 + i, "Size": "96x96"}
        params.update({"Model hash": "6ce0161689", "Model": model, "Version": "v1.10.1"})
        info = PngInfo()
        info.add_text("parameters", format_infotext(prompt, "blurry", params))
        path = outputs / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(i).save(path, pnginfo=info)
        os.utime(path, (start + i, start + i))
        made.append(f"{folder}/{name}")
    return made


@pytest.fixture(scope="module")
def server(launch) -> Iterator[LaunchedServer]:
    with launch("history", "--admin", "ann", auth="file") as launched:
        write_a1111_outputs(launched.outputs)
        secret = launched.root / "users.txt"  # ann's and bob's passwords: must never come out
        (launched.outputs / "txt2img-images" / "2024-05-01" / "leak.png").symlink_to(secret)
        (launched.outputs / "txt2img-images" / "escape").symlink_to(launched.root, target_is_directory=True)
        yield launched


def get(server: LaunchedServer, path: str, auth=AUTH) -> requests.Response:
    return requests.get(server.url + path, auth=auth, timeout=TIMEOUT)


# -- history ------------------------------------------------------------------------------------------------------
def test_history_pages_filters_and_search(server) -> None:
    first = get(server, "/easel/history?per_page=10").json()
    assert first["total"] == 30 and first["pages"] == 3 and len(first["items"]) == 10
    newest = first["items"][0]
    assert newest["path"] == "txt2img-grids/2024-05-01/grid-0029.png" and newest["mode"] == "grid"
    assert newest["prompt"] == "teapot still life, study 29" and newest["seed"] == 529
    assert newest["checkpoint"] == "dreamshaper_8" and newest["size"] == "96x96" and newest["date"] == "2024-05-01"
    every = [i["path"] for p in (1, 2, 3) for i in get(server, f"/easel/history?per_page=10&page={p}").json()["items"]]
    assert len(set(every)) == 30
    assert get(server, "/easel/history?mode=img2img").json()["total"] == 10
    assert get(server, "/easel/history?date=2024-05-01").json()["total"] == 20
    assert get(server, "/easel/history?checkpoint=dreamshaper").json()["total"] == 15
    found = get(server, "/easel/history?q=fox%20snow&mode=img2img").json()
    assert found["total"] == 10 and all("fox in snow" in i["prompt"] for i in found["items"])
    assert get(server, "/easel/history?q=blurry").json()["total"] == 0  # negatives are not searched
    for bad in ("mode=video", "date=tomorrow", "per_page=0", "per_page=5000", "page=0"):
        response = get(server, f"/easel/history?{bad}")
        assert response.status_code == 422, (bad, response.status_code, response.text)
    assert requests.get(server.url + "/easel/history", timeout=TIMEOUT).status_code == 401
    assert get(server, "/easel/history", auth=("ann", "wrong")).status_code == 401


def test_history_serves_images_and_thumbnails(server) -> None:
    path = "img2img-images/2024-05-02/00001-501.png"
    full = get(server, f"/easel/history/file?path={path}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    assert full.content == (server.outputs / path).read_bytes()
    assert full.headers["x-content-type-options"] == "nosniff"
    thumb = get(server, f"/easel/history/thumbnail?path={path}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert len(list((server.outputs / ".thumbnails").glob("*.webp"))) >= 1


TRAVERSALS = [
    "../users.txt",
    "..%2Fusers.txt",
    "%2e%2e/users.txt",
    "%2E%2E%2Fusers.txt",
    "%252e%252e%252fusers.txt",
    "txt2img-images/../../users.txt",
    "txt2img-images/2024-05-01/../../../users.txt",
    "....//users.txt",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..\\users.txt",
    "..%5Cusers.txt",
    "txt2img-images/2024-05-01/leak.png",  # a symlink to the password file
    "txt2img-images/escape/users.txt",  # a symlinked folder leading out
    "txt2img-images/escape/outputs/txt2img-images/2024-05-01/00000-500.png",
    "..%00.png",
    ".trash/../../users.txt",
    "models/Stable-diffusion/tiny-sd1.safetensors",
    "../models/Stable-diffusion/tiny-sd1.safetensors",
]


@pytest.mark.parametrize("route", ["/easel/history/file?path=", "/easel/history/thumbnail?path=", "trash"])
def test_paths_never_leave_the_outputs_folder(server, route: str) -> None:
    for raw in TRAVERSALS:
        url = "/easel/history/file?trash=true&path=" if route == "trash" else route
        response = get(server, url + raw)
        assert response.status_code in (400, 404), (raw, response.status_code)
        assert b"correct horse" not in response.content and b"safetensors" not in response.content[:200], raw
        assert response.headers["content-type"].startswith("application/json"), raw
    secret = server.root / "users.txt"
    for raw in ("../users.txt", "txt2img-images/2024-05-01/leak.png", "txt2img-images/escape/users.txt"):
        response = requests.post(f"{server.url}/easel/history/delete", json={"path": raw}, auth=AUTH, timeout=TIMEOUT)
        assert response.status_code in (400, 404), raw
    assert secret.is_file() and (server.outputs / "txt2img-images" / "2024-05-01" / "leak.png").is_symlink()
    response = requests.post(f"{server.url}/easel/history/restore", json={"id": "../../users.txt"}, auth=AUTH)
    assert response.status_code in (400, 404)


def test_delete_goes_to_the_trash_and_comes_back(server) -> None:
    path = "txt2img-images/2024-05-01/00003-503.png"
    original = (server.outputs / path).read_bytes()
    post = lambda route, body, auth=AUTH: requests.post(  # noqa: E731
        f"{server.url}/easel/history/{route}", json=body, auth=auth, timeout=TIMEOUT
    )
    deleted = post("delete", {"path": path})
    assert deleted.status_code == 200, deleted.text
    assert not (server.outputs / path).exists()
    assert path not in [i["path"] for i in get(server, "/easel/history?per_page=200").json()["items"]]
    trash = get(server, "/easel/history/trash").json()["items"]
    assert [t["original"] for t in trash] == [path]
    trashed = get(server, f"/easel/history/file?trash=true&path={trash[0]['id']}")
    assert trashed.status_code == 200 and trashed.content == original
    assert post("trash/empty", {}, auth=BOB).status_code == 403  # not an admin: the trash stays
    restored = post("restore", {"id": trash[0]["id"]})
    assert restored.json() == {"path": path} and (server.outputs / path).read_bytes() == original
    assert get(server, "/easel/history/trash").json()["items"] == []
    assert get(server, "/easel/history").json()["total"] == 30
    post("delete", {"path": path})
    assert post("trash/empty", {}).json() == {"deleted": 1}  # ann is the admin
    assert get(server, "/easel/history").json()["total"] == 29
    write_a1111_outputs(server.outputs)  # put it back for the other tests (same names, same mtimes)


# -- queue --------------------------------------------------------------------------------------------------------
SLOW = {"steps": 150, "width": 128, "height": 128}


def queue(server: LaunchedServer, auth) -> dict:
    response = get(server, "/easel/queue", auth=auth)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def start_generation(server: LaunchedServer, auth, prompt: str, results: dict, **extra) -> threading.Thread:
    def run() -> None:
        payload = tiny_txt2img(prompt=prompt, **SLOW, **extra)
        results[prompt] = requests.post(f"{server.url}/sdapi/v1/txt2img", json=payload, auth=auth, timeout=300)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def cancel(server: LaunchedServer, job_id: str, auth) -> requests.Response:
    return requests.post(f"{server.url}/easel/queue/{job_id}/cancel", auth=auth, timeout=TIMEOUT)


def test_each_user_sees_their_own_job_and_others_anonymised(server) -> None:
    results: dict[str, requests.Response] = {}
    threads = [start_generation(server, BOB, "bob's private lighthouse", results)]
    wait_for(lambda: [j["total_steps"] for j in queue(server, BOB)["jobs"]] == [150])  # running, steps planned
    threads.append(start_generation(server, AUTH, "ann's secret garden", results))
    wait_for(lambda: len(queue(server, BOB)["jobs"]) == 2)

    seen_by_bob = queue(server, BOB)
    assert seen_by_bob["user"] == "bob" and not seen_by_bob["admin"]
    own, other = seen_by_bob["jobs"]
    assert own["mine"] and own["owner"] == "you" and own["prompt"] == "bob's private lighthouse"
    assert own["size"] == "128x128" and own["position"] == 0 and own["can_cancel"] and own["total_steps"] == 150
    assert other["owner"] == "another user" and other["prompt"] is None and other["progress"] is None
    assert other["size"] == "128x128" and other["position"] == 1 and other["status"] == "queued"
    assert not other["can_cancel"]
    assert "secret garden" not in get(server, "/easel/queue", auth=BOB).text

    refused = cancel(server, other["id"], BOB)
    assert refused.status_code == 403 and "another user" in refused.json()["detail"]
    assert len(queue(server, BOB)["jobs"]) == 2  # still waiting

    seen_by_ann = queue(server, AUTH)
    assert seen_by_ann["admin"]
    bobs = seen_by_ann["jobs"][0]
    assert bobs["owner"] == "bob" and bobs["prompt"] is None and bobs["can_cancel"]
    assert cancel(server, bobs["id"], AUTH).status_code == 200  # the admin stops bob's running job
    assert cancel(server, "0123456789abcdef", AUTH).status_code == 404
    threads[0].join(120)
    assert results["bob's private lighthouse"].status_code == 200  # stopped after the step it was on

    anns = wait_for(lambda: [j for j in queue(server, AUTH)["jobs"] if j["mine"]])
    assert anns[0]["prompt"] == "ann's secret garden"
    assert cancel(server, anns[0]["id"], AUTH).status_code == 200  # one's own job
    threads[1].join(120)
    wait_for(lambda: queue(server, BOB)["jobs"] == [])
    assert requests.get(f"{server.url}/easel/queue", timeout=TIMEOUT).status_code == 401


def test_progress_interrupt_and_skip_act_on_ones_own_job(server) -> None:
    """A1111's /progress, /interrupt and /skip on a shared server: bob neither watches nor stops ann's job."""
    results: dict[str, requests.Response] = {}
    thread = start_generation(server, AUTH, "ann's private portrait", results)
    wait_for(lambda: get(server, "/sdapi/v1/progress").json()["current_image"])  # ann sees her preview
    seen = get(server, "/sdapi/v1/progress", auth=BOB).json()
    assert seen["current_image"] is None and seen["progress"] == 0 and seen["state"]["sampling_step"] == 0
    assert "another user" in seen["textinfo"].lower() and seen["state"]["job_count"] == 1
    for verb in ("interrupt", "skip"):
        refused = requests.post(f"{server.url}/sdapi/v1/{verb}", auth=BOB, timeout=TIMEOUT)
        assert refused.status_code == 403 and "another user" in refused.json()["detail"], verb
    mine = get(server, "/sdapi/v1/progress").json()
    assert not mine["state"]["interrupted"] and not mine["state"]["skipped"] and mine["progress"] > 0
    assert requests.post(f"{server.url}/sdapi/v1/interrupt", auth=AUTH, timeout=TIMEOUT).status_code == 200
    thread.join(120)
    assert json.loads(results["ann's private portrait"].json()["info"])["interrupted"] is True
    idle = requests.post(f"{server.url}/sdapi/v1/interrupt", auth=BOB, timeout=TIMEOUT)
    assert idle.status_code == 200  # nothing running: a no-op, as A1111


# -- browser ------------------------------------------------------------------------------------------------------
def log_in(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)


@pytest.mark.browser
def test_history_tab_shows_sends_and_deletes(server, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page(tmp_path / "profile") as page:
        listed = get(server, "/easel/history?per_page=1").json()  # other tests' generations are in it too
        total, newest = listed["total"], listed["items"][0]
        log_in(page, server.url, *AUTH)
        page.get_by_role("tab", name="History").click()
        page.locator("#history_gallery img").nth(11).wait_for(state="visible", timeout=60_000)
        page.wait_for_function(
            f"() => document.querySelector('#history_page').innerText.includes('{total} image')", timeout=30_000
        )
        assert page.locator("#history_gallery img").count() == min(total, 36)
        page.locator("#history_gallery img").first.click()
        text = page.locator("#history_text textarea")
        seed = f"Seed: {newest['seed']}"
        page.wait_for_function(f"el => el.value.includes('{seed}')", arg=text.element_handle(), timeout=30_000)
        page.locator("#history_image img").wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "history-tab.png"), full_page=True)

        page.locator("#history_search input, #history_search textarea").first.fill("fox")
        page.locator("#history_search input, #history_search textarea").first.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#history_page').innerText.includes('10 image')", timeout=30_000
        )
        page.locator("#history_gallery img").first.click()
        page.wait_for_function("el => el.value.includes('fox in snow')", arg=text.element_handle(), timeout=30_000)
        page.locator("#history_send_txt2img").click()
        prompt = page.locator("#txt2img_prompt textarea")
        page.wait_for_function("el => el.value.includes('fox in snow')", arg=prompt.element_handle(), timeout=30_000)
        assert page.locator("#txt2img_steps input[type=number]").first.input_value() == "20"

        def send_from_history(target: str) -> None:
            page.get_by_role("tab", name="History").click()
            page.locator("#history_gallery img").first.click()
            page.wait_for_function("el => el.value.includes('fox')", arg=text.element_handle(), timeout=30_000)
            page.locator(f"#history_send_{target}").click()

        send_from_history("png_info")
        info = page.locator("#png_info_text textarea")
        page.wait_for_function("el => el.value.includes('fox in snow')", arg=info.element_handle(), timeout=30_000)
        send_from_history("img2img")
        page.locator("#img2img_image img").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('#img2img_prompt textarea').value.includes('fox in snow')", timeout=30_000
        )
        send_from_history("inpaint")
        page.locator("#inpaint_editor button[aria-label=Brush]").wait_for(timeout=30_000)  # a picture is in
        page.wait_for_function(
            "() => document.querySelector('#inpaint_prompt textarea').value.includes('fox in snow')", timeout=30_000
        )
        page.wait_for_timeout(500)
        page.locator("#inpaint_editor").screenshot(path=str(SCREENSHOTS / "history-sent-to-inpaint.png"))

        page.get_by_role("tab", name="History").click()
        page.locator("#history_gallery img").first.click()
        page.wait_for_function("el => el.value.includes('fox in snow')", arg=text.element_handle(), timeout=30_000)
        chosen = text.input_value()
        page.locator("#history_delete").click()
        page.wait_for_function(
            "() => document.querySelector('#history_page').innerText.includes('9 image')", timeout=30_000
        )
        assert len(list((server.outputs / ".trash").rglob("*.png"))) == 1
        page.locator("#history_trash_panel").get_by_text("Trash").first.click()
        page.locator("#history_trash input").click()
        page.get_by_role("option").first.click()
        page.locator("#history_restore").click()
        page.wait_for_function(
            "() => document.querySelector('#history_page').innerText.includes('10 image')", timeout=30_000
        )
        assert list((server.outputs / ".trash").rglob("*.png")) == []
        assert "fox in snow" in chosen


@pytest.mark.browser
def test_queue_panel_shows_a_waiting_job(server, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, requests.Response] = {}
    threads = []
    try:
        with browser_page(tmp_path / "profile") as page:
            log_in(page, server.url, *BOB)
            threads.append(start_generation(server, AUTH, "ann's first", results))
            wait_for(lambda: len(queue(server, AUTH)["jobs"]) == 1)
            threads.append(start_generation(server, AUTH, "ann's second", results))
            page.locator("#txt2img_prompt textarea").fill("bob waits for a blue boat")
            set_number(page, "txt2img_steps", 3)
            set_number(page, "txt2img_width", 64)
            set_number(page, "txt2img_height", 64)
            wait_for(lambda: len(queue(server, AUTH)["jobs"]) == 2)
            page.locator("#txt2img_generate").click()
            wait_for(lambda: len(queue(server, AUTH)["jobs"]) == 3)
            page.locator("#easel_queue_panel").get_by_text("Queue").first.click()
            table = page.locator("#easel_queue table")
            table.wait_for(state="visible", timeout=30_000)
            page.wait_for_function(
                "() => document.querySelector('#easel_queue').innerText.includes('bob waits for a blue boat')",
                timeout=30_000,
            )
            shown = page.locator("#easel_queue").inner_text()
            assert shown.count("another user") == 2 and "ann's" not in shown and "64x64" in shown
            page.locator("#txt2img_progress").get_by_text("ahead of you").wait_for(timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "queue-panel.png"))
            page.locator("#easel_queue_pick input").click()
            options = page.get_by_role("option")
            assert options.count() == 1  # only bob's own job can be cancelled by bob
            options.first.click()
            page.locator("#easel_queue_cancel").click()
            wait_for(lambda: len(queue(server, AUTH)["jobs"]) == 2)
            page.wait_for_function(
                "() => !document.querySelector('#easel_queue').innerText.includes('bob waits')", timeout=30_000
            )
    finally:
        for job in queue(server, AUTH)["jobs"]:
            cancel(server, job["id"], AUTH)
        for thread in threads:
            thread.join(120)
