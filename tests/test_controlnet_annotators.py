"""ControlNet preprocessors that need detector weights (depth, normals, ADE20K segmentation), from tiny
random-weight transformers folders in ``models/annotators/``: listed only while their weights are there, maps of
the processor resolution's size and the expected range, one model per folder, pickles refused unless allowed, a
clear error naming the folder when weights are missing, and txt2img with a depth unit (engine and API)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from pipelines.errors import EaselError
from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, LoadedExtensions, load_extensions
from pipelines.extensions.state import ExtensionState
from pipelines.generate import Engine
from pipelines.metadata.infotext import parse_infotext
from pipelines.models.tiny_models import build_tiny_controlnet, save_controlnet_file
from pipelines.requests import GenerationRequest
from tests.annotator_models import save_tiny_depth_anything, save_tiny_dpt, save_tiny_segformer, save_tiny_vitpose
from tests.api_support import AUTH, b64, decode
from tests.conftest import Launch, TinyModels
from tests.server import LaunchedServer
from tests.test_controlnet import control_picture
from tests.test_controlnet_api import write_controlnets

DEPTH = ("depth_midas", "depth_anything", "normal_midas")
SEG = ("seg_ofade20k",)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: the tiny annotator folders, copied into each test's own annotators folder."""
    root = tmp_path_factory.mktemp("annotator-weights")
    save_tiny_dpt(root / "depth_midas", seed=1)
    save_tiny_depth_anything(root / "depth_anything", seed=2)
    save_tiny_segformer(root / "seg_ofade20k", seed=3)
    save_tiny_vitpose(root / "openpose", seed=4)
    return root


def install(weights: Path, annotators: Path, *folders: str) -> None:
    for name in folders:
        shutil.copytree(weights / name, annotators / name)


@pytest.fixture
def extension(tmp_path: Path, tiny: TinyModels) -> Iterator[tuple[LoadedExtensions, Path]]:
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(tmp_path / "state.json"))
    cn_dir, annotators = tmp_path / "ControlNet", tmp_path / "annotators"
    annotators.mkdir()
    save_controlnet_file(build_tiny_controlnet(tiny.components("sd1")["unet"], seed=3), cn_dir / "tiny.safetensors")
    extensions.catalog.bind_model_folders(controlnet=[cn_dir], annotators=[annotators])
    yield extensions, annotators
    extensions.unload()


def module(name: str) -> Any:
    return sys.modules[MODULE_PREFIX + "controlnet." + name]


def test_listed_only_while_the_weights_are_there(extension: tuple[LoadedExtensions, Path], weights: Path) -> None:
    _, annotators = extension
    library, pre = module("annotators").LIBRARY, module("preprocessors")
    assert library.available() == {}
    with pytest.raises(EaselError, match=r"not available: .*never downloads.*annotators/depth_anything/"):
        pre.find("depth_anything")
    with pytest.raises(EaselError, match="not available"):
        pre.find("lineart_anime")  # no annotator of Easel's: the plain message
    install(weights, annotators, "depth_anything")
    assert list(library.available()) == ["depth_anything", "normal_midas"]  # normals from any depth folder
    assert pre.find("depth_anything").name == "depth_anything"
    install(weights, annotators, "depth_midas", "seg_ofade20k")
    assert list(library.available()) == ["depth_midas", "depth_anything", "normal_midas", "seg_ofade20k"]
    assert library.details()["normal_midas"]["weights"] == "annotators/depth_midas/"  # MiDaS first, when there
    assert [s["name"] for s in library.details()["normal_midas"]["sliders"]] == [
        "Resolution",
        "Normal Background Threshold",
    ]
    shutil.rmtree(annotators / "seg_ofade20k")
    assert "seg_ofade20k" not in library.available()
    with pytest.raises(EaselError, match="seg_ofade20k/"):
        pre.find("seg_ofade20k")


def test_each_annotator_gives_a_map_at_the_processor_resolution(
    extension: tuple[LoadedExtensions, Path], weights: Path
) -> None:
    _, annotators = extension
    install(weights, annotators, "depth_midas", "depth_anything", "seg_ofade20k", "openpose")
    ann, pre = module("annotators"), module("preprocessors")
    picture = control_picture(128).resize((128, 96))
    for name in (*DEPTH, *SEG, "openpose"):
        out = np.asarray(pre.run(name, picture, 64, -1, -1))
        assert out.shape == (64, 85, 3) and out.dtype == np.uint8, name
        if name.startswith("depth"):
            assert out.min() == 0 and out.max() == 255, name  # min-max normalised
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all(), name
        if name.startswith("seg"):
            palette = {tuple(c) for c in ann.ADE20K_PALETTE.tolist()}
            assert {tuple(c) for c in out.reshape(-1, 3).tolist()} <= palette
        if name == "openpose":  # black, sticks at 60% of their colour, points at full colour
            drawn = {(0, 0, 0), *ann.OPENPOSE_COLORS, *(tuple(int(c * 0.6) for c in k) for k in ann.OPENPOSE_COLORS)}
            assert {tuple(c) for c in out.reshape(-1, 3).tolist()} <= drawn
    assert len(ann.ADE20K_PALETTE) == 150 and tuple(ann.ADE20K_PALETTE[12]) == (150, 5, 61)  # "person"
    assert len(ann.LIBRARY.loaded()) == 4  # normal_midas shares depth_midas's model
    assert all(next(m.parameters()).device.type == "cpu" for m in ann.LIBRARY.loaded())


def test_normals_from_a_known_depth() -> None:
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    try:
        ann = module("annotators")
        # a plane rising to the right at a slope whose Sobel gradient (8x the slope) equals the z component
        depth = np.tile(np.arange(40, dtype=np.float32) * ann.NORMAL_STRENGTH / 8, (20, 1))
        normal = ann.normal_from_depth(depth, 0.0)
        tilted = round(127.5 + 127.5 / np.sqrt(2))
        assert np.abs(normal[5, 5].astype(int) - [tilted, 128, tilted]).max() <= 1  # (z, y, x) as R, G, B
        background = ann.normal_from_depth(depth, 0.5)
        assert tuple(background[5, 5]) == (255, 127, 127) and tuple(background[5, 35]) == tuple(normal[5, 35])
    finally:
        extensions.unload()


def test_openpose_points_and_skeleton_from_known_coco_keypoints() -> None:
    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    try:
        ann = module("annotators")
        coco = np.zeros((17, 2))
        coco[0], coco[5], coco[6] = (32, 10), (44, 24), (20, 24)  # nose, left shoulder, right shoulder
        coco[9] = (200, 5)  # the left wrist, off the 64 px picture
        scores = np.zeros(17)
        scores[[0, 5, 6, 9]] = 0.9
        points = ann.openpose_points(coco, scores, 64, 64)
        assert points[0] == (32, 10) and points[1] == (32, 24)  # the neck: the shoulders' midpoint
        assert points[2] == (20, 24) and points[5] == (44, 24) and points[7] is None and points[3] is None
        canvas = ann.draw_openpose(points, 64, 64)
        assert tuple(canvas[24, 26]) == (153, 0, 0)  # the neck-right shoulder stick: red at 60%
        assert tuple(canvas[24, 38]) == (153, 51, 0)  # neck-left shoulder: orange at 60%
        assert tuple(canvas[17, 32]) == (0, 0, 153)  # neck-nose: blue at 60%
        assert tuple(canvas[10, 32]) == (255, 0, 0) and tuple(canvas[24, 32]) == (255, 85, 0)  # nose, neck points
        assert tuple(canvas[50, 10]) == (0, 0, 0) and tuple(canvas[24, 10]) == (0, 0, 0)  # nothing drawn there
    finally:
        extensions.unload()


def test_pickles_wrong_models_and_class_counts_are_refused(
    extension: tuple[LoadedExtensions, Path], weights: Path
) -> None:
    from transformers import AutoModelForDepthEstimation

    extensions, annotators = extension
    pre = module("preprocessors")
    install(weights, annotators, "depth_anything")
    folder = annotators / "depth_anything"
    state = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(EaselError, match="pytorch_model.bin is a pickle, refused"):
        pre.run("depth_anything", control_picture(), 64, -1, -1)
    extensions.catalog.bind_model_folders(True, annotators=[annotators])
    assert np.asarray(pre.run("depth_anything", control_picture(), 64, -1, -1)).shape == (64, 64, 3)
    shutil.copytree(weights / "seg_ofade20k", annotators / "depth_midas")  # a model in the wrong folder
    with pytest.raises(EaselError, match="depth_midas/ is not a transformers depth-estimation model"):
        pre.run("depth_midas", control_picture(), 64, -1, -1)
    shutil.copytree(weights / "depth_anything", annotators / "openpose")
    with pytest.raises(EaselError, match="openpose/ holds a depth_anything model, not VitPose"):
        pre.run("openpose", control_picture(), 64, -1, -1)
    save_tiny_segformer(annotators / "seg_ufade20k", labels=19)  # a Cityscapes-sized head
    with pytest.raises(EaselError, match="predicts 19 classes; seg ControlNets need ADE20K's 150"):
        pre.run("seg_ufade20k", control_picture(), 64, -1, -1)


def test_txt2img_with_a_depth_unit(
    extension: tuple[LoadedExtensions, Path], weights: Path, make_engine: Any, tmp_path: Path
) -> None:
    extensions, annotators = extension
    install(weights, annotators, "depth_anything")
    engine: Engine = make_engine(tmp_path / "outputs")
    engine.hooks = extensions.hooks
    engine.manager.activate("tiny-sd1.safetensors")

    def generate(**unit: Any) -> Any:
        cn = {"unit_0": {"model": "tiny", "image": control_picture(), **unit}} if unit else {}
        values = {"prompt": "a boat", "steps": 3, "width": 64, "height": 64, "seed": 4, "save": False}
        result = engine.generate(GenerationRequest(**values, extensions={"controlnet": cn}))
        assert not engine.hooks.failed, engine.hooks.failed
        return result

    depth = generate(module="depth_anything", processor_res=64)
    plain, raw = generate(), generate(module="none")
    pixels = [np.asarray(r.images[0], dtype=np.int16) for r in (depth, plain, raw)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 0.5 and np.abs(pixels[0] - pixels[2]).mean() > 0.5
    assert parse_infotext(depth.infotexts[0])["ControlNet 0"].startswith("Module: depth_anything, Model: tiny [")
    shutil.rmtree(annotators / "depth_anything")
    with pytest.raises(EaselError, match="annotators/depth_anything/"):
        generate(module="depth_anything")


# -- through a launched server, as sd-webui-controlnet's clients call it -----------------------------------------


@pytest.fixture(scope="module")
def server(launch: Launch, tiny: TinyModels) -> Iterator[LaunchedServer]:
    with launch("annotators", auth="flag", prepare=lambda models: write_controlnets(models, tiny)) as s:
        yield s


def get(server: LaunchedServer, path: str) -> Any:
    response = requests.get(f"{server.url}{path}", auth=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def post(server: LaunchedServer, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = requests.post(f"{server.url}{path}", json=body, auth=AUTH, timeout=300)
    assert response.status_code == status, response.text
    return response.json()


@pytest.mark.app
def test_api_lists_detects_and_generates_once_the_weights_are_in(server: LaunchedServer, weights: Path) -> None:
    assert not {*DEPTH, *SEG} & set(get(server, "/controlnet/module_list")["module_list"])
    detect = {"controlnet_module": "depth_anything", "controlnet_input_images": [b64(control_picture(128))]}
    missing = post(server, "/controlnet/detect", detect, 422)["detail"]
    assert "never downloads" in missing and "annotators/depth_anything/" in missing
    install(weights, server.models / "annotators", "depth_anything", "seg_ofade20k", "openpose")
    modules = get(server, "/controlnet/module_list")  # read again: no restart needed
    assert {"depth_anything", "normal_midas", "seg_ofade20k", "openpose"} <= set(modules["module_list"])
    assert modules["module_detail"]["depth_anything"]["weights"] == "annotators/depth_anything/"
    types = get(server, "/controlnet/control_types")["control_types"]
    assert types["Depth"]["module_list"] == ["none", "depth_anything"] and "Segmentation" in types
    assert types["OpenPose"]["default_option"] == "openpose"
    for name in ("depth_anything", "normal_midas", "seg_ofade20k", "openpose"):
        body = detect | {"controlnet_module": name, "controlnet_processor_res": 96}
        result = post(server, "/controlnet/detect", body)
        out = np.asarray(decode(result["images"][0]).convert("RGB"))
        assert out.shape == (96, 96, 3), name
    unit = {"input_image": b64(control_picture()), "module": "depth_anything", "model": "control_tiny_sd15_canny"}
    body = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64}
    body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
    assert decode(post(server, "/sdapi/v1/txt2img", body)["images"][0]).size == (64, 64)
    unit["module"] = "seg_ufade20k"
    assert "annotators/seg_ufade20k/" in post(server, "/sdapi/v1/txt2img", body, 422)["detail"]
    assert get(server, "/controlnet/version") == {"version": 3}
    assert "switched off" not in server.log.read_text()  # missing weights are the user's to fix, not a crash
