"""Shared fixtures: tiny random-weight checkpoints of every family, saved as real files, and an engine over them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.extensions.loader import BUILTIN_DIR, LoadedExtensions, load_extensions  # noqa: E402
from pipelines.extensions.state import ExtensionState  # noqa: E402
from pipelines.generate import Engine, EngineSettings  # noqa: E402
from pipelines.models.checkpoints import HashCache  # noqa: E402
from pipelines.models.manager import PipelineManager  # noqa: E402
from pipelines.models.tiny_models import build_tiny_components, save_diffusers_folder, save_single_file  # noqa: E402
from tests.server import LAUNCHED, LaunchedServer, launched_server  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class TinyModels:
    """Builds each family's tiny checkpoint once per test session, on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._components: dict[str, dict] = {}

    def components(self, family: str) -> dict:
        if family not in self._components:
            self._components[family] = build_tiny_components(family, seed=1)
        return self._components[family]

    def single_file(self, family: str) -> Path:
        """``<root>/single/<family>.safetensors`` in the original LDM layout (with a v-prediction sidecar for sd2_v)."""
        path = self.root / "single" / f"{family}.safetensors"
        if not path.exists():
            save_single_file(family, self.components(family), path)
            if family == "sd2_v":
                path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
        return path

    def diffusers_folder(self, family: str) -> Path:
        folder = self.root / "diffusers" / family
        if not (folder / "model_index.json").exists():
            save_diffusers_folder(family, self.components(family), folder)
        return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def models_dir(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An A1111-layout models folder with a tiny SD1 single file, its diffusers folder twin, and a tiny SDXL."""
    models = tmp_path_factory.mktemp("models")
    ckpts = models / "Stable-diffusion"
    (ckpts / "sub").mkdir(parents=True)
    (ckpts / "tiny-sd1.safetensors").hardlink_to(tiny.single_file("sd1"))
    (ckpts / "sub" / "tiny-sdxl.safetensors").hardlink_to(tiny.single_file("sdxl"))
    folder = tiny.diffusers_folder("sd1")
    (ckpts / "tiny-sd1-diffusers").symlink_to(folder, target_is_directory=True)
    return models


@pytest.fixture(scope="session")
def make_engine(models_dir: Path) -> Callable[[Path], Engine]:
    """A factory for engines over the shared tiny models folder, writing into a test's own outputs folder."""

    def make(outputs: Path, ram_cache: int | None = 2) -> Engine:
        manager = PipelineManager(
            models_dir / "Stable-diffusion",
            torch.device("cpu"),
            torch.float32,
            HashCache(outputs / "hashes.json"),
            ram_cache_size=ram_cache,
        )
        return Engine(manager, outputs, EngineSettings(preview_every=1))

    return make


@pytest.fixture
def builtins(tmp_path: Path) -> Iterator[LoadedExtensions]:
    """The built-in extensions, loaded as the server loads them, with their state in this test's folder."""
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(tmp_path / "state.json"))
    yield extensions
    extensions.unload()


@pytest.fixture(scope="session")
def shared_engine(make_engine: Callable[[Path], Engine], tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """One engine for the tests that only read from it (saves loading the same model again and again)."""
    engine = make_engine(tmp_path_factory.mktemp("outputs"))
    engine.manager.activate("tiny-sd1.safetensors")
    return engine


# -- launched servers ------------------------------------------------------------------------------------------
Launch = Callable[..., AbstractContextManager[LaunchedServer]]


@pytest.fixture(scope="session")
def launch(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """A server of one's own, in a fresh folder: ``with launch("fuzz", "--max-upload-mb", "1", auth="flag") as s:``.

    For tests that change server state others would see (queue size, lockouts, the password file, the model).
    """

    def start(name: str, *extra_args: str, **options: object) -> AbstractContextManager[LaunchedServer]:
        return launched_server(name, tmp_path_factory.mktemp(name), models_dir, *extra_args, **options)  # type: ignore[arg-type]

    return start


def add_real_networks(models: Path, tiny: TinyModels) -> None:
    """A LoRA (in a subfolder), an embedding, a loadable VAE and a styles.csv, as an artist's folders hold them."""
    from safetensors.torch import save_file

    from pipelines.models.ldm_layout import vae_to_ldm
    from tests.test_networks import kohya_lora

    (models / "Lora" / "characters").mkdir(parents=True)
    save_file(kohya_lora(tiny.components("sd1")), str(models / "Lora" / "characters" / "tinylora.safetensors"))
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    save_file({"emb_params": vectors}, str(models / "embeddings" / "tinyemb.safetensors"))
    other = build_tiny_components("sd1", seed=7)["vae"].state_dict()
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other).items()}
    save_file(state, str(models / "VAE" / "other.vae.safetensors"))
    styles = models.parent / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nfancy,"masterpiece, {prompt}, golden hour",lowres\n')


@pytest.fixture(scope="session")
def plain_server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    """One server without a login for the UI, browser and no-auth API tests, with real networks to click.

    Tests that change a global setting (the VAE picker, the checkpoint) put it back; tests that look for saved
    files look for their own seeds or compare listings from before and after, since other tests save here too.
    """
    with launch("plain", prepare=lambda models: add_real_networks(models, tiny)) as server:
        yield server


@pytest.fixture(scope="session")
def auth_server(launch: Launch) -> Iterator[LaunchedServer]:
    """One server behind a password file (ann and bob), shared by test_api.py and test_security.py.

    ``--queue-size 2`` and ``--max-upload-mb 2`` are what test_api.py's limits tests count on; throttling is off
    because test_security.py tries every route with a wrong password (throttling: test_security_attacks.py).
    """
    no_throttle = ["--login-free-failures", "1000", "--login-lockout-failures", "1000"]
    limits = ["--queue-size", "2", "--max-upload-mb", "2", "--allowed-hosts", "easel.lan,studio.local"]
    with launch("auth", *limits, *no_throttle, auth="file") as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LAUNCHED:
        names = ", ".join(LAUNCHED)
        terminalreporter.write_line(f"launched {len(LAUNCHED)} servers (~9 s each to start): {names}")
