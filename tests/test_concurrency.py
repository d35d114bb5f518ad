"""Five clients at once, UI and API mixed, a model switch in the middle: nothing lost, nothing half-written."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from gradio_client import Client
from PIL import Image

from pipelines.metadata.infotext import parse_infotext
from tests.api_support import AUTH
from tests.api_support import tiny_txt2img as payload
from tests.test_app import txt2img as ui_txt2img
from tests.threads import CheckedThread

pytestmark = pytest.mark.app
CLIENTS, REQUESTS = 5, 10


def test_five_clients_ten_requests_each_with_a_model_switch(launch) -> None:
    # A server of its own: a queue of 8 (test_api.py's shared one holds 2), a model switch, and a count of all files.
    done = 0
    done_lock = threading.Lock()
    halfway = threading.Event()
    max_waiting = 0

    def finished() -> None:
        nonlocal done
        with done_lock:
            done += 1
            if done >= CLIENTS * REQUESTS // 2:
                halfway.set()

    with launch("concurrency", "--queue-size", "8", auth="flag") as server:
        url, outputs = server.url, server.outputs

        def client(index: int) -> list[int]:
            seeds = []
            ui = Client(url, auth=AUTH, verbose=False) if index % 2 == 0 else None
            for i in range(REQUESTS):
                seed = 1000 * (index + 1) + i
                if ui is not None and i % 2 == 0:  # even clients alternate UI and API calls
                    gallery, *_ = ui_txt2img(ui, checkpoint_name="", batch_size=1, seed=seed, steps=2)
                    assert len(gallery) == 1
                else:
                    body = payload(seed=seed, steps=2, save_images=True)
                    response = requests.post(f"{url}/sdapi/v1/txt2img", json=body, auth=AUTH, timeout=300)
                    assert response.status_code == 200, response.text
                    assert len(response.json()["images"]) == 1
                seeds.append(seed)
                finished()
            return seeds

        def watch_queue() -> None:
            nonlocal max_waiting
            while not stop.is_set():
                state = requests.get(f"{url}/sdapi/v1/progress", auth=AUTH, timeout=30).json()["state"]
                max_waiting = max(max_waiting, state["job_count"])
                time.sleep(0.05)

        stop = threading.Event()
        watcher = CheckedThread(target=watch_queue)
        watcher.start()
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            assert halfway.wait(600)
            switch = requests.post(
                f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1-diffusers"}, auth=AUTH, timeout=300
            )
            assert switch.status_code == 200, switch.text
            expected = sorted(seed for f in futures for seed in f.result(timeout=600))
        elapsed = time.monotonic() - started
        stop.set()
        watcher.join(5)

    files = sorted(outputs.glob("txt2img-images/*/*"))
    assert len(files) == CLIENTS * REQUESTS, [f.name for f in files]
    assert len({f.name for f in files}) == len(files)
    assert all(f.suffix == ".png" for f in files), "a temporary or partial file was left behind"
    seeds, models_used = [], set()
    for path in files:
        with Image.open(path) as image:
            image.load()  # the whole file decodes: nothing half-written
            assert image.size == (64, 64)
            fields = parse_infotext(image.text["parameters"])
        seeds.append(int(fields["Seed"]))
        models_used.add(fields["Model"])
    assert sorted(seeds) == expected
    assert models_used == {"tiny-sd1", "tiny-sd1-diffusers"}  # the switch happened midway, nothing failed
    assert max_waiting >= 2, "the clients never overlapped"
    print(f"\n{CLIENTS * REQUESTS} images in {elapsed:.1f}s; at most {max_waiting} jobs in line at once")
