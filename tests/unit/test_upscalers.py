"""Model upscalers: spandrel without torchvision, detection from real files, tiling, refusals, SD upscale's tiles."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.upscale import UpscaleSpec, upscale
from pipelines.runtime.jobs import Job
from pipelines.sampling.hires import HIRES_UPSCALERS, HiresSize, check_hires
from pipelines.upscalers.library import UpscalerFolders, UpscalerLibrary, guess_scale, read_upscaler
from pipelines.upscalers.sd_upscale import plan_sd_upscale, sd_upscale
from pipelines.upscalers.spandrel_import import load_spandrel
from pipelines.upscalers.tiles import tile_count, tile_starts, tiled_call
from tests.upscaler_models import add_upscalers, compact_state, rrdbnet_state, save_pth, save_safetensors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("upscaler-models")
    add_upscalers(root)
    return root


@pytest.fixture
def library(models: Path) -> UpscalerLibrary:
    return UpscalerLibrary(UpscalerFolders.from_models_dir(models), tile=32, tile_overlap=8)


def smooth_picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Low-frequency colour like a real picture (a random-noise picture would make every tile edge look alike)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=gen)
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    array = big[0].clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def test_spandrel_imports_without_torchvision_and_leaves_no_placeholder() -> None:
    """In a fresh interpreter: torchvision is not importable, spandrel is, and nothing fake remains importable."""
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('torchvision') is None, 'torchvision is installed here'\n"
        "from pipelines.upscalers.spandrel_import import load_spandrel, torchvision_available\n"
        "spandrel = load_spandrel()\n"
        "assert not torchvision_available()\n"
        "assert not [n for n in sys.modules if n.split('.')[0] == 'torchvision'], 'placeholder left in sys.modules'\n"
        "assert importlib.util.find_spec('torchvision') is None\n"
        "ids = {a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures()}\n"
        "assert {'ESRGAN', 'Compact', 'SwinIR', 'HAT', 'DAT'} <= ids, ids\n"
        "from spandrel.architectures.RestoreFormer import tv_normalize\n"
        "try:\n    tv_normalize(None)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "EaselError" in done.stdout and "torchvision" in done.stdout


@pytest.mark.parametrize(
    ("name", "arch", "scale"),
    [("tiny-esrgan-4x", "ESRGAN", 4), ("tiny-compact-2x", "Compact", 2), ("tiny-compact-2x-st", "Compact", 2)],
)
def test_files_are_detected_through_the_real_path(library: UpscalerLibrary, name: str, arch: str, scale: int) -> None:
    file = library.find(name)
    descriptor = library.load(file)
    assert descriptor.architecture.id == arch and descriptor.scale == scale
    assert library.scale_of(file) == scale
    picture = smooth_picture(20, 12)
    one_pass = library.upscale(picture, (20 * scale, 12 * scale), name)
    assert one_pass.size == (20 * scale, 12 * scale) and one_pass.mode == "RGB"
    assert np.asarray(one_pass).std() > 1  # a picture, not a flat clamp


def test_listing_names_kinds_and_a1111_real_esrgan_names(tmp_path: Path) -> None:
    add_upscalers(tmp_path)
    save_pth(compact_state(scale=4), tmp_path / "RealESRGAN" / "realesr-general-x4v3.pth", "params")
    (tmp_path / "ESRGAN" / "notes.txt").write_text("not a model")
    library = UpscalerLibrary(UpscalerFolders.from_models_dir(tmp_path, dat=tmp_path / "elsewhere"))
    assert library.names()[:3] == ["None", "Lanczos", "Nearest"]
    files = library.files()
    assert set(files) == {"tiny-esrgan-4x", "tiny-compact-2x", "tiny-compact-2x-st", "R-ESRGAN General 4xV3"}
    items = {item["name"]: item for item in library.items()}
    lanczos = {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert items["Lanczos"] == lanczos
    assert items["tiny-esrgan-4x"]["model_name"] == "ESRGAN" and items["tiny-compact-2x"]["scale"] == 2
    assert items["R-ESRGAN General 4xV3"]["model_path"].endswith("realesr-general-x4v3.pth")
    assert library.folders.dat == tmp_path / "elsewhere"
    assert [guess_scale(n) for n in ("4x-UltraSharp", "DAT_x3", "2xLexica", "SwinIR", "x4plus")] == [4, 3, 2, 4, 4]
    with pytest.raises(EaselError, match="unknown upscaler 'R-ESRGAN 8x'"):
        library.find("R-ESRGAN 8x")


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "ESRGAN" / "evil-4x.pth"
    path.parent.mkdir()
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "payload": Exploit()}, path)
    raw = tmp_path / "ESRGAN" / "evil-raw.pth"
    raw.write_bytes(pickle.dumps(Exploit()))  # a plain pickle, not torch's zip format
    library = UpscalerLibrary(UpscalerFolders.from_models_dir(tmp_path))
    for name in ("evil-4x", "evil-raw"):
        with pytest.raises(EaselError, match="refused|could not be read") as caught:
            library.upscale(Image.new("RGB", (8, 8)), (32, 32), name)
        assert "weights_only=False" not in str(caught.value)
    with pytest.raises(EaselError, match=r"would run code it names \((posix|nt)\.system\)"):
        read_upscaler(path)
    assert not marker.exists()


def test_files_that_are_not_upscalers_are_refused_clearly(tmp_path: Path) -> None:
    broken = save_safetensors({"conv_first.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "HAT" / "broken.safetensors")
    with pytest.raises(EaselError, match="not an architecture spandrel knows"):
        read_upscaler(broken)
    state = rrdbnet_state()
    state["body.0.rdb1.conv1.weight"] = torch.zeros(32, 7, 3, 3)  # one tensor of the wrong shape
    with pytest.raises(EaselError, match="broken-shape.safetensors"):
        read_upscaler(save_safetensors(state, tmp_path / "ESRGAN" / "broken-shape.safetensors"))
    (tmp_path / "SwinIR").mkdir()
    (tmp_path / "SwinIR" / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(EaselError, match="could not be read"):
        read_upscaler(tmp_path / "SwinIR" / "junk.pth")


def test_tile_layout_covers_every_pixel() -> None:
    assert tile_starts(100, 0, 8) == [0] and tile_starts(30, 32, 8) == [0]
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_count(100, 30, 32, 8) == 4 and tile_count(100, 30, 0, 8) == 1
    for length, tile, overlap in ((100, 32, 8), (57, 20, 9), (193, 192, 8)):
        starts = tile_starts(length, tile, overlap)
        covered = set().union(*(range(s, s + tile) for s in starts))
        assert covered == set(range(length)) and starts[-1] + tile == length


def test_blending_is_exact_for_a_model_without_context() -> None:
    """A per-pixel model (nearest 3x) sees no tile edge, so tiled output must equal untiled to float precision."""

    def nearest3(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3) * 0.9 + 0.05

    x = torch.rand(1, 3, 45, 70, generator=torch.Generator().manual_seed(2))
    calls: list[int] = []
    out = tiled_call(nearest3, x, 3, (24, 16), 6, lambda: calls.append(1))
    assert torch.allclose(out, nearest3(x), atol=1e-6)
    assert len(calls) == tile_count(70, 45, (24, 16), 6)


@pytest.mark.parametrize("state", [rrdbnet_state, compact_state], ids=["esrgan", "compact"])
def test_tiled_equals_untiled_within_tolerance(state) -> None:
    """Tiles see zero padding where the full picture has neighbours; the ramps give those pixels weight near 0.

    Measured on these models (56x72 smooth picture, tiles of 32): with overlap 8, at most 5.3 levels (of 255) apart
    at a pixel and 0.14 on average; without overlap (hard seams) 21-29 levels and 0.5-0.65. The bounds sit between.
    """
    spandrel = load_spandrel()
    descriptor = spandrel.ModelLoader().load_from_state_dict(state())
    x = torch.from_numpy(np.asarray(smooth_picture(72, 56), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    full = descriptor(x)
    blended = (tiled_call(descriptor, x, descriptor.scale, 32, 8) - full).abs() * 255
    seams = (tiled_call(descriptor, x, descriptor.scale, 32, 0) - full).abs() * 255
    assert float(blended.max()) < 8 and float(blended.mean()) < 0.3
    assert float(seams.max()) > 2.5 * float(blended.max())  # the test can tell a seam from a blend


def test_extras_upscale_with_two_models_blended_and_cropped(library: UpscalerLibrary) -> None:
    picture = smooth_picture(30, 20)
    spec = UpscaleSpec(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=40, upscaler_1="tiny-esrgan-4x")
    out = upscale(picture, spec, library.upscale, library.names())
    assert out.size == (100, 40)
    blend = UpscaleSpec(
        upscaling_resize=3, upscaler_1="tiny-compact-2x", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.5
    )
    assert upscale(picture, blend, library.upscale, library.names()).size == (90, 60)
    params = blend.parameters(30, 20)
    assert params["Postprocess upscaler 2"] == "Lanczos" and params["Postprocess size"] == "90x60"
    with pytest.raises(EaselError, match="unknown upscaler 'tiny'"):
        upscale(picture, UpscaleSpec(upscaler_1="tiny"), library.upscale, library.names())


def test_progress_per_tile_and_interrupt_between_tiles(library: UpscalerLibrary) -> None:
    picture = smooth_picture(64, 40)
    assert library.passes("tiny-compact-2x", (64, 40), (256, 160)) == [(64, 40), (128, 80)]
    expected = library.tiles_for("tiny-compact-2x", (64, 40), (256, 160))
    assert expected == tile_count(64, 40, 32, 8) + tile_count(128, 80, 32, 8)
    ticks: list[int] = []
    library.upscale(picture, (256, 160), "tiny-compact-2x", lambda: ticks.append(1))
    assert len(ticks) == expected

    job = Job()
    job.interrupt()
    hires = library.hires_upscale(job)  # interrupted: the picture is finished by Lanczos, at the right size
    size = HiresSize((128, 80), (120, 80))
    assert hires(picture, size, "tiny-compact-2x").size == (120, 80)
    assert hires(picture, size, "Nearest").size == (120, 80)


def test_hires_names_accept_models_only_where_the_library_has_them(library: UpscalerLibrary) -> None:
    from pipelines.requests import GenerationRequest

    request = GenerationRequest(prompt="x", enable_hr=True, hr_upscaler="tiny-esrgan-4x", width=64, height=64)
    with pytest.raises(EaselError, match="unknown hires upscaler 'tiny-esrgan-4x'"):
        check_hires(request)
    check_hires(request, library.hires_names())
    assert library.hires_names()[: len(HIRES_UPSCALERS)] == list(HIRES_UPSCALERS)
    assert request.validated(library.hires_names()).hr_upscaler == "tiny-esrgan-4x"


def test_sd_upscale_tiles_blend_and_keep_the_size(library: UpscalerLibrary) -> None:
    picture = smooth_picture(60, 40)
    plan = plan_sd_upscale(picture.size, 2, 64, 64, overlap=16)
    assert plan.size == (120, 80) and plan.tile == (64, 64) and plan.tiles == tile_count(120, 80, 64, 16)
    seeds: list[int] = []

    def img2img(tile: Image.Image, seed: int) -> Image.Image:
        seeds.append(seed)
        return Image.eval(tile, lambda v: 255 - v)  # a per-pixel "repaint": blending must be invisible

    out = sd_upscale(picture, plan, lambda im, size: library.upscale(im, size, "tiny-compact-2x"), img2img, 42)
    reference = Image.eval(library.upscale(picture, (120, 80), "tiny-compact-2x"), lambda v: 255 - v)
    assert out.size == (120, 80) and seeds == [42] * plan.tiles
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
    with pytest.raises(EaselError, match="multiples of 8"):
        plan_sd_upscale((60, 40), 2, 100, 64)
    with pytest.raises(EaselError, match="scale factor"):
        plan_sd_upscale((60, 40), 9, 64, 64)
    assert plan_sd_upscale((45, 50), 1.5, 64, 64).size == (64, 72)  # A1111: rounded down to a multiple of 8
    small = plan_sd_upscale((82, 72), 3, 512, 512, resize=False)  # "None": the picture keeps its own size
    assert small.size == (82, 72) and small.tile == (80, 72) and small.tiles == 2  # tiles a multiple of 8 inside
