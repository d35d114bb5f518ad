"""Shared fixtures: tiny random-weight checkpoints of every family, saved as real files, and an engine over them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.generate import Engine, EngineSettings  # noqa: E402
from pipelines.models.checkpoints import HashCache  # noqa: E402
from pipelines.models.manager import PipelineManager  # noqa: E402
from pipelines.models.tiny_models import build_tiny_components, save_diffusers_folder, save_single_file  # noqa: E402

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


@pytest.fixture(scope="session")
def shared_engine(make_engine: Callable[[Path], Engine], tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """One engine for the tests that only read from it (saves loading the same model again and again)."""
    engine = make_engine(tmp_path_factory.mktemp("outputs"))
    engine.manager.activate("tiny-sd1.safetensors")
    return engine
