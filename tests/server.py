"""Starting a real Easel server in a subprocess for app and browser tests (loopback only, bounded waits).

``launched_server`` is the one way tests start a server: it builds the server's own folder (models over the
shared tiny checkpoints, outputs, Gradio cache, log, password file) and yields a ``LaunchedServer``. Tests get
one through the ``launch`` fixture (a server of their own) or the shared ``plain_server`` / ``auth_server``
fixtures in ``tests/conftest.py``; each start costs ~9 s, so share one unless the test changes server state.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.api_support import AUTH, private_models_dir, server_args, write_auth_file

ROOT = Path(__file__).resolve().parent.parent
LAUNCHED: list[str] = []  # every server this test run started, by name: the count is printed at the end


@dataclass(frozen=True)
class LaunchedServer:
    """A running server and the folders it owns (all under ``root``)."""

    name: str
    url: str
    root: Path
    models: Path  # Stable-diffusion/ (the shared tiny checkpoints), Lora/, VAE/, embeddings/
    outputs: Path
    cache: Path  # its GRADIO_TEMP_DIR
    log: Path
    auth_file: Path | None  # with auth="file": ann and bob (see tests.api_support)

    @property
    def styles(self) -> Path:
        """``styles.csv`` beside the models folder, where A1111 (and so Easel) keeps it."""
        return self.root / "styles.csv"


@contextmanager
def launched_server(
    name: str,
    root: Path,
    shared_models: Path,
    *extra_args: str,
    auth: str | None = None,
    env: dict[str, str] | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> Iterator[LaunchedServer]:
    """Build ``root`` (models, outputs, cache, password file) and run a server over it; stop it afterwards.

    ``auth``: None (no login), "flag" (``--auth ann:...``) or "file" (``--auth-file`` with ann and bob).
    ``prepare(models)`` adds files to the models folder (or beside it) before the server starts.
    """
    models = private_models_dir(shared_models, root)
    (models / "embeddings").mkdir(exist_ok=True)
    if prepare is not None:
        prepare(models)
    auth_file = write_auth_file(root) if auth == "file" else None
    if auth == "flag":
        login = ["--auth", f"{AUTH[0]}:{AUTH[1]}"]
    elif auth == "file":
        login = ["--auth-file", str(auth_file)]
    elif auth is None:
        login = []
    else:
        raise ValueError(f"auth must be None, 'flag' or 'file', not {auth!r}")
    outputs, cache, log = root / "outputs", root / "gradio-cache", root / "server.log"
    LAUNCHED.append(name)
    with running_server(
        server_args(models, outputs, *login, *extra_args), log, env={"GRADIO_TEMP_DIR": str(cache), **(env or {})}
    ) as url:
        yield LaunchedServer(name, url, root, models, outputs, cache, log, auth_file)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    args: list[str],
    log_path: Path,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    https_ca: Path | None = None,
) -> Iterator[str]:
    """Run ``python -m webui ARGS --port N`` and yield its base URL once it answers; stop it afterwards.

    ``https_ca``: the server speaks HTTPS with a certificate this CA file vouches for.
    """
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webui", *args, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"{'https' if https_ca else 'http'}://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:  # the CA file may be one the server makes as it starts (--tls-self-signed)
                    context = ssl.create_default_context(cafile=str(https_ca)) if https_ca else None
                    with urllib.request.urlopen(url + "/", timeout=2, context=context):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"server did not start:\n{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
