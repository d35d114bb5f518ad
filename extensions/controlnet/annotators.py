"""Preprocessors that need detector weights: depth, normals from depth, ADE20K segmentation and body pose, run from
local transformers model folders only (nothing is ever downloaded).

Folder convention: ``models/annotators/<folder>/`` holds one transformers model as ``save_pretrained`` writes it
(``config.json``, ``model.safetensors`` and ``preprocessor_config.json``, e.g. a copy of a Hugging Face repository):

- ``depth_midas/``: a MiDaS-style DPT depth model (``DPTForDepthEstimation``, e.g. dpt-hybrid-midas);
- ``depth_anything/`` and ``depth_anything_v2/``: Depth Anything (V2) depth models;
- ``normal_midas`` has no folder of its own: it derives normals from the first of those depth folders present;
- ``seg_ofade20k/`` and ``seg_ufade20k/``: any ADE20K semantic-segmentation model that
  ``AutoModelForSemanticSegmentation`` opens (SegFormer, UperNet, BEiT...; Easel has no OneFormer/UniFormer of its
  own, the names are the ones sd-webui-controlnet's clients send), 150 classes, coloured with ADE20K's palette;
- ``openpose/``: a VitPose model (``VitPoseForPoseEstimation``, COCO's 17 body keypoints), run on the whole picture
  as one person's box (no person detector: one person per picture) and drawn as OpenPose's coloured skeleton.

A preprocessor is listed only while its folder holds a ``config.json`` (read again at each listing). Models load
with ``local_files_only`` from the folder's path, one per folder, kept in RAM; each runs on the engine's device
only for the call, then goes back to the CPU. Pickled weights (``pytorch_model.bin``) are refused unless the
server runs with ``--allow-pickle``.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from pipelines.errors import EaselError

from .preprocessors import Map, Preprocessor, Slider

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADE20K_CLASSES = 150
Point = tuple[float, float]
NORMAL_STRENGTH = 2 * np.pi  # the z component against the raw depth's Sobel gradients, as MiDaS normals use

# ADE20K's standard colour per class index (wall, building, sky, floor, tree, ...), which seg ControlNets learned.
ADE20K_PALETTE = np.array(
    [
        *((120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80)),
        *((140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7)),
        *((150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4)),
        *((255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255)),
        *((255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255)),
        *((8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255)),
        *((224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20)),
        *((255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255)),
        *((140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0)),
        *((153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255)),
        *((11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133)),
        *((255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0)),
        *((0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153)),
        *((255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20)),
        *((255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194)),
        *((0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255)),
        *((0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255)),
        *((163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255)),
        *((255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255)),
        *((112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163)),
        *((255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255)),
        *((255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255)),
        *((255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0)),
        *((173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255)),
        *((184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255)),
    ],
    dtype=np.uint8,
)

# OpenPose's 18 body points (nose, neck, right shoulder/elbow/wrist, left ..., right hip/knee/ankle, left ...,
# right eye, left eye, right ear, left ear) from COCO's 17 (None: the neck, the shoulders' midpoint).
COCO_TO_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# The sticks openpose ControlNets learned, as OpenPose point pairs, and the 18 colours (stick i, point i).
OPENPOSE_LIMBS = (
    *((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13)),
    *((1, 0), (0, 14), (14, 16), (0, 15), (15, 17)),
)
OPENPOSE_COLORS = (
    *((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0)),
    *((0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255)),
    *((170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)),
)
STICK_WIDTH = 4  # half the stick's thickness and the points' radius, in pixels of the map, as OpenPose draws
KEYPOINT_THRESHOLD = 0.3  # heatmap peaks below this are left out (an unseen joint draws nothing)


@dataclass(frozen=True)
class Annotator:
    """One sd-webui-controlnet module that needs a model: the folders it may use (first present wins) and its task."""

    name: str
    folders: tuple[str, ...]
    task: str  # a key of TASKS: which transformers class opens the folder
    output: Callable[[Any, Map, float, float, torch.device], Map]  # (loaded, image at processor res, a, b, device)
    sliders: tuple[Slider, ...] = ()


@dataclass
class Loaded:
    model: Any
    processor: Any
    key: tuple[float, int]  # the weights' mtime and size when loaded: a replaced file is loaded again


# task -> (the transformers class that opens its folders, what to call such a model in messages)
TASKS = {
    "depth": ("AutoModelForDepthEstimation", "depth-estimation"),
    "segmentation": ("AutoModelForSemanticSegmentation", "ADE20K semantic-segmentation"),
    "pose": ("VitPoseForPoseEstimation", "VitPose (COCO keypoints)"),
}


def _model_class(task: str) -> Any:
    import transformers

    return getattr(transformers, TASKS[task][0])


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError) as exc:
        raise EaselError(f"annotators/{folder.name}/config.json is not readable JSON ({exc})") from None


def _weights(folder: Path, allow_pickle: bool) -> tuple[Path, bool]:
    """The folder's weights file and whether it is safetensors; EaselError naming what to put there."""
    for name in SAFE_WEIGHTS:
        if (folder / name).is_file():
            return folder / name, True
    for name in PICKLED_WEIGHTS:
        if (folder / name).is_file():
            if not allow_pickle:
                raise EaselError(
                    f"annotators/{folder.name}/{name} is a pickle, refused (convert it to model.safetensors, or start "
                    "Easel with --allow-pickle to read it weights-only)"
                )
            return folder / name, False
    raise EaselError(f"annotators/{folder.name}/ has no model.safetensors (save the model with save_pretrained)")


def load_folder(folder: Path, task: str, allow_pickle: bool = False) -> Loaded:
    """A transformers model folder for ``task`` with its image processor, from the folder only (no hub call)."""
    from transformers import AutoImageProcessor

    weights, safe = _weights(folder, allow_pickle)
    if not (folder / "preprocessor_config.json").is_file():
        raise EaselError(f"annotators/{folder.name}/ has no preprocessor_config.json (copy it from the model's files)")
    stat = weights.stat()
    kind = TASKS[task][1]
    if task == "pose" and _model_type(folder) != "vitpose":  # the one class without an auto mapping to check it
        raise EaselError(f"annotators/{folder.name}/ holds a {_model_type(folder) or 'unknown'} model, not {kind}")
    try:
        model = _model_class(task).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=safe, trust_remote_code=False
        )
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise EaselError(
            f"annotators/{folder.name}/ is not a transformers {kind} model Easel can open ({exc})"
        ) from None
    if task == "segmentation" and int(model.config.num_labels) != ADE20K_CLASSES:
        raise EaselError(
            f"annotators/{folder.name}/ predicts {model.config.num_labels} classes; seg ControlNets need ADE20K's "
            f"{ADE20K_CLASSES}"
        )
    if task == "pose" and int(model.config.num_labels) < len(COCO_TO_OPENPOSE) - 1:
        raise EaselError(f"annotators/{folder.name}/ predicts {model.config.num_labels} keypoints, not COCO's 17")
    return Loaded(model.eval().to(torch.float32), processor, (stat.st_mtime, stat.st_size))


def _predict(loaded: Loaded, image: Map, device: torch.device) -> Any:
    inputs = loaded.processor(images=Image.fromarray(image), return_tensors="pt")
    pixels = inputs["pixel_values"].to(device, torch.float32)
    with torch.inference_mode():
        return loaded.model(pixel_values=pixels)


def raw_depth(loaded: Loaded, image: Map, device: torch.device) -> np.ndarray:
    """The model's relative inverse depth (near: large) at the image's size, float32 ``[H, W]``."""
    depth = _predict(loaded, image, device).predicted_depth
    depth = torch.nn.functional.interpolate(depth[:, None].float(), size=image.shape[:2], mode="bicubic")
    result = depth[0, 0].cpu().numpy().astype(np.float32)
    if getattr(loaded.model.config, "depth_estimation_type", "relative") == "metric":
        result = -result  # metric models give distance: far is large; flip so that near is bright, as the others
    return result


def _normalised(depth: np.ndarray) -> np.ndarray:
    low, high = float(depth.min()), float(depth.max())
    return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def _rgb(gray01: np.ndarray) -> Map:
    return np.repeat((np.clip(gray01, 0, 1) * 255.0).round().astype(np.uint8)[..., None], 3, axis=2)


def depth_map(loaded: Loaded, image: Map, _a: float, _b: float, device: torch.device) -> Map:
    """The depth map depth ControlNets take: min-max normalised, near bright, grey in three channels."""
    return _rgb(_normalised(raw_depth(loaded, image, device)))


def normal_from_depth(depth: np.ndarray, background: float) -> Map:
    """MiDaS-style normals: Sobel slopes of the raw depth against a constant z, flat where the normalised depth is
    below ``background``; stored as sd-webui-controlnet feeds control_sd15_normal (channels z, y, x as R, G, B)."""
    x = ndimage.sobel(depth, axis=1, mode="mirror")
    y = ndimage.sobel(depth, axis=0, mode="mirror")
    far = _normalised(depth) < background
    x[far] = 0
    y[far] = 0
    normal = np.stack([x, y, np.full_like(x, NORMAL_STRENGTH)], axis=2)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1].copy()


def normal_map(loaded: Loaded, image: Map, background: float, _b: float, device: torch.device) -> Map:
    return normal_from_depth(raw_depth(loaded, image, device), background)


def segmentation_map(loaded: Loaded, image: Map, _a: float, _b: float, device: torch.device) -> Map:
    """Each pixel's most likely ADE20K class at the image's size, in that class's palette colour."""
    logits = _predict(loaded, image, device).logits
    logits = torch.nn.functional.interpolate(logits.float(), size=image.shape[:2], mode="bilinear")
    classes = logits[0].argmax(dim=0).cpu().numpy()
    return ADE20K_PALETTE[classes]


def openpose_points(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> list[Point | None]:
    """OpenPose's 18 points from COCO's 17 (``[17, 2]`` x, y in pixels); None where unseen or off the picture."""
    seen: list[Point | None] = []
    for (x, y), score in zip(keypoints[:17].tolist(), scores[:17].tolist(), strict=True):
        inside = 0 <= x < width and 0 <= y < height
        seen.append((float(x), float(y)) if score >= KEYPOINT_THRESHOLD and inside else None)
    points: list[Point | None] = []
    for coco in COCO_TO_OPENPOSE:
        if coco is not None:
            points.append(seen[coco])
        else:
            left, right = seen[5], seen[6]
            points.append(((left[0] + right[0]) / 2, (left[1] + right[1]) / 2) if left and right else None)
    return points


def draw_openpose(points: Sequence[Point | None], height: int, width: int) -> Map:
    """The pose as openpose ControlNets saw it: on black, each stick an ellipse in its colour at 60%, then each
    point a disc in its full colour."""
    from PIL import ImageDraw

    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    turn = np.linspace(0, 2 * np.pi, 37)
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS, strict=False):
        start, end = points[a], points[b]
        if start is None or end is None:
            continue
        (x0, y0), (x1, y1) = start, end
        half, angle = np.hypot(x1 - x0, y1 - y0) / 2, np.arctan2(y1 - y0, x1 - x0)
        u, v = half * np.cos(turn), STICK_WIDTH * np.sin(turn)
        xs = (x0 + x1) / 2 + u * np.cos(angle) - v * np.sin(angle)
        ys = (y0 + y1) / 2 + u * np.sin(angle) + v * np.cos(angle)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=tuple(int(c * 0.6) for c in color))
    for point, color in zip(points, OPENPOSE_COLORS, strict=True):
        if point is not None:
            x, y = point
            draw.ellipse((x - STICK_WIDTH, y - STICK_WIDTH, x + STICK_WIDTH, y + STICK_WIDTH), fill=color)
    return np.asarray(canvas)


def pose_map(loaded: Loaded, image: Map, _a: float, _b: float, device: torch.device) -> Map:
    """One person's body pose by VitPose, the whole picture taken as the person's box (VitPose places joints
    inside a box it is given; Easel has no person detector), drawn OpenPose's way."""
    height, width = image.shape[:2]
    boxes = [[[0.0, 0.0, float(width), float(height)]]]  # COCO boxes: x, y, width, height
    inputs = loaded.processor(images=Image.fromarray(image), boxes=boxes, return_tensors="pt")
    extra = {}
    if getattr(loaded.model.config.backbone_config, "num_experts", 1) > 1:  # VitPose+: the COCO expert
        extra["dataset_index"] = torch.zeros(1, dtype=torch.long, device=device)
    with torch.inference_mode():
        outputs = loaded.model(pixel_values=inputs["pixel_values"].to(device, torch.float32), **extra)
    outputs.heatmaps = outputs.heatmaps.float().cpu()
    person = loaded.processor.post_process_pose_estimation(outputs, boxes=boxes)[0][0]
    points = openpose_points(person["keypoints"].numpy(), person["scores"].numpy(), width, height)
    return draw_openpose(points, height, width)


DEPTH_FOLDERS = ("depth_midas", "depth_anything", "depth_anything_v2")
ANNOTATORS: dict[str, Annotator] = {
    a.name: a
    for a in (
        Annotator("depth_midas", ("depth_midas",), "depth", depth_map),
        Annotator("depth_anything", ("depth_anything",), "depth", depth_map),
        Annotator("depth_anything_v2", ("depth_anything_v2",), "depth", depth_map),
        Annotator(
            "normal_midas",
            DEPTH_FOLDERS,
            "depth",
            normal_map,
            (Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01),),
        ),
        Annotator("seg_ofade20k", ("seg_ofade20k",), "segmentation", segmentation_map),
        Annotator("seg_ufade20k", ("seg_ufade20k",), "segmentation", segmentation_map),
        Annotator("openpose", ("openpose",), "pose", pose_map),
    )
}
ALIASES = {"depth": "depth_midas", "normal_map": "normal_midas", "segmentation": "seg_ufade20k"}
CONTROL_TYPES = (("OpenPose", "openpose"), ("Depth", "depth"), ("NormalMap", "normal"), ("Segmentation", "seg"))


class AnnotatorLibrary:
    """The annotator folders, their loaded models (one per folder) and the device they run on.

    The extension binds where the folders are, the engine's device and ``--allow-pickle`` at setup (read when used,
    since the server binds them after); unbound, nothing is listed.
    """

    def __init__(self) -> None:
        self._roots: Callable[[], Sequence[Path]] = list
        self._device: Callable[[], str] = lambda: "cpu"
        self._allow_pickle: Callable[[], bool] = lambda: False
        self._loaded: dict[tuple[str, str], Loaded] = {}
        self._lock = threading.Lock()  # one annotator call at a time: each moves its model on and off the device

    def bind(
        self, roots: Callable[[], Sequence[Path]], device: Callable[[], str], allow_pickle: Callable[[], bool]
    ) -> None:
        self._roots, self._device, self._allow_pickle = roots, device, allow_pickle
        with self._lock:
            self._loaded.clear()

    def roots(self) -> list[Path]:
        return [Path(p) for p in self._roots()]

    def folder(self, annotator: Annotator) -> Path | None:
        """The first of the annotator's folders that holds a model (a ``config.json``), or None."""
        for root in self.roots():
            for name in annotator.folders:
                if (root / name / "config.json").is_file():
                    return root / name
        return None

    def where(self, annotator: Annotator) -> str:
        root = self.roots()[0] if self.roots() else Path("models/annotators")
        return " or ".join(f"{root / name}/" for name in annotator.folders)

    def preprocessor(self, annotator: Annotator) -> Preprocessor:
        return Preprocessor(annotator.name, functools.partial(self._run, annotator), sliders=annotator.sliders)

    def available(self) -> dict[str, Preprocessor]:
        """The annotators whose weights are present now, as preprocessors, in the registry's order."""
        return {a.name: self.preprocessor(a) for a in ANNOTATORS.values() if self.folder(a) is not None}

    def details(self) -> dict[str, dict[str, object]]:
        """``module_detail`` of the available annotators, each naming the folder its weights come from."""
        out: dict[str, dict[str, object]] = {}
        for name, pre in self.available().items():
            folder = self.folder(ANNOTATORS[name])
            out[name] = {**pre.detail(), "weights": f"annotators/{folder.name}/" if folder else ""}
        return out

    def find(self, name: str) -> Preprocessor | None:
        """The annotator ``name`` (or alias) when its weights are present; None for a name that is no annotator;
        EaselError naming the folder to fill for one whose weights are missing."""
        key = ALIASES.get(name.strip().lower(), name.strip().lower())
        annotator = ANNOTATORS.get(key)
        if annotator is None:
            return None
        if self.folder(annotator) is None:
            raise EaselError(
                f"ControlNet preprocessor '{annotator.name}' is not available: it needs detector weights, which "
                f"Easel never downloads; put a transformers {TASKS[annotator.task][1]} model folder (config.json, "
                f"model.safetensors, preprocessor_config.json) in {self.where(annotator)}"
            )
        return self.preprocessor(annotator)

    def _model(self, folder: Path, task: str) -> Loaded:
        key = (str(folder), task)
        cached = self._loaded.get(key)
        if cached is not None:
            weights, _ = _weights(folder, self._allow_pickle())
            stat = weights.stat()
            if cached.key == (stat.st_mtime, stat.st_size):
                return cached
        loaded = load_folder(folder, task, bool(self._allow_pickle()))
        self._loaded[key] = loaded
        return loaded

    def _run(self, annotator: Annotator, image: Map, a: float, b: float) -> Map:
        folder = self.folder(annotator)
        if folder is None:
            raise EaselError(
                f"ControlNet preprocessor '{annotator.name}': its weights are gone from {self.where(annotator)}"
            )
        device = torch.device(self._device())
        with self._lock:
            loaded = self._model(folder, annotator.task)
            loaded.model.to(device)
            try:
                return annotator.output(loaded, image, a, b, device)
            except (RuntimeError, ValueError, IndexError) as exc:  # a model that does not fit its task, or no memory
                raise EaselError(f"ControlNet preprocessor '{annotator.name}' failed on {folder}/: {exc}") from None
            finally:
                if device.type != "cpu":
                    loaded.model.to("cpu")

    def loaded(self) -> list[Any]:
        """The models in RAM (for tests: one per folder whatever the modules that share it)."""
        return [entry.model for entry in self._loaded.values()]


LIBRARY = AnnotatorLibrary()


def control_types(models: Sequence[str]) -> dict[str, Any]:
    """sd-webui-controlnet's Depth / NormalMap / Segmentation control types, for the annotators present."""
    present = list(LIBRARY.available())
    types: dict[str, Any] = {}
    for title, prefix in CONTROL_TYPES:
        modules = [m for m in present if m.startswith(prefix)]
        if not modules:
            continue
        matching = ["None", *(m for m in models if prefix in m.lower())]
        types[title] = {
            "module_list": ["none", *modules],
            "model_list": matching,
            "default_option": modules[0],
            "default_model": matching[1] if len(matching) > 1 else "None",
        }
    return types
