"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis): no input gives a 5xx.

Bounded: a fixed number of examples per operation and a wall-clock budget. Payloads that are valid but
expensive (big images, many steps) are scaled down before sending, so the time goes into odd inputs, not pixels.
"""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.api_support import AUTH

pytestmark = pytest.mark.app
BUDGET_SECONDS = 60
EXAMPLES = 300
CAPS = {
    "steps": 2,
    "width": 64,
    "height": 64,
    "n_iter": 1,
    "batch_size": 1,
    "hr_second_pass_steps": 2,
    "hr_resize_x": 128,
    "hr_resize_y": 128,
    "hr_scale": 2,
    "upscaling_resize_w": 256,
    "upscaling_resize_h": 256,
}
NOT_FUZZED = {"/sdapi/v1/interrupt", "/sdapi/v1/skip"}  # harmless, but they would cut other examples short


def scaled_down(path: str, body: object) -> object:
    if isinstance(body, dict):
        if path.endswith(("/txt2img", "/img2img")):  # A1111's defaults (512x512, 50 steps) are slow on a CPU
            for key in ("steps", "width", "height"):
                body.setdefault(key, CAPS[key])
        for key, cap in CAPS.items():
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
                body[key] = cap
    return body


def test_no_input_makes_a_server_error(launch) -> None:
    # A server of its own: fuzzed POSTs to /options, /unload-checkpoint ... change what other tests would see.
    with launch("fuzz", "--max-upload-mb", "1", auth="flag") as server:
        url = server.url
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", auth=AUTH)
        operations = [result.ok() for result in schema.get_all_operations()]
        operations = [op for op in operations if op.path not in NOT_FUZZED]
        assert len(operations) > 20
        strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode])
        session = requests.Session()
        session.auth = AUTH
        deadline = time.monotonic() + BUDGET_SECONDS
        seen: dict[int, int] = {}
        failures: list[str] = []

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            if time.monotonic() > deadline:
                return
            case.body = scaled_down(case.path, case.body)
            response = case.call(base_url=url, session=session, timeout=120)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {case.as_curl_command()}")
            if response.status_code in (400, 413, 422, 429):
                assert "application/json" in response.headers.get("content-type", "")

        check()
        print(f"\nstatus codes seen: {dict(sorted(seen.items()))}")
        assert not failures, "\n".join(failures[:5])
        assert sum(seen.values()) >= 30
        assert requests.get(f"{url}/sdapi/v1/progress", auth=AUTH, timeout=30).status_code == 200
