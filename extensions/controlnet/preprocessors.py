"""Preprocessors that need no downloaded weights: numpy, scipy and Pillow only.

Each takes an RGB ``uint8`` array ``[H, W, 3]`` at the processor resolution (short side ``processor_res``) and the
unit's two thresholds, and returns the control map as an RGB ``uint8`` array. Names, slider ranges and defaults are
sd-webui-controlnet's (its ``/controlnet/module_list`` ``module_detail``), so clients' values mean the same here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.errors import EaselError

from . import image_maps

Map = np.ndarray


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    min: float
    max: float
    step: float = 1

    def as_detail(self) -> dict[str, float | str]:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., Map]  # (map, threshold_a, threshold_b[, seed=]) -> map
    resolution: bool = True  # whether "processor_res" applies (a resolution slider in the UI)
    sliders: tuple[Slider, ...] = ()
    model_free: bool = False  # needs no ControlNet model (reference_*: attention sharing with the picture)
    uses_mask: bool = False  # gets the unit's mask as the image's alpha channel (the inpaint hints)
    uses_seed: bool = False  # random, seeded with the request's seed (shuffle)

    def threshold_defaults(self) -> tuple[float, float]:
        a = self.sliders[0].value if len(self.sliders) > 0 else 64.0
        b = self.sliders[1].value if len(self.sliders) > 1 else 64.0
        return a, b

    def detail(self) -> dict[str, object]:
        sliders: list[dict[str, float | str]] = []
        if self.resolution:
            sliders.append(Slider("Resolution", 512, 64, 2048).as_detail())  # sd-webui-controlnet names it so
        sliders += [s.as_detail() for s in self.sliders]
        return {"model_free": self.model_free, "sliders": sliders}


def _gray(image: Map) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _rgb(gray: np.ndarray) -> Map:
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def none(image: Map, _a: float, _b: float) -> Map:
    return image


def invert(image: Map, _a: float, _b: float) -> Map:
    """White-on-black line art from black-on-white drawings (sd-webui-controlnet's "invert (from white bg...)")."""
    return 255 - image


def canny(image: Map, low: float, high: float) -> Map:
    """Canny (1986) edges: Gaussian smoothing, Sobel gradients, non-maximum suppression, hysteresis thresholds.

    Thresholds are on the Sobel magnitude of 0-255 intensities, as OpenCV's (its L1 gradient with a 3x3 kernel).
    """
    if low > high:
        low, high = high, low
    gray = ndimage.gaussian_filter(_gray(image), sigma=1.0)
    gx = ndimage.sobel(gray, axis=1)
    gy = ndimage.sobel(gray, axis=0)
    magnitude = np.abs(gx) + np.abs(gy)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    # compare each pixel with its two neighbours along the gradient direction (0, 45, 90, 135 degrees)
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    sector = (((angle + 22.5) // 45) % 4).astype(np.int8)
    pairs = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    keep = np.zeros_like(magnitude, dtype=bool)
    for index, (a, b) in pairs.items():
        here = sector == index
        keep |= here & (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
    thin = np.where(keep, magnitude, 0.0)
    strong = thin >= high
    weak = thin >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros_like(image)
    connected = np.zeros(count + 1, dtype=bool)
    connected[np.unique(labels[strong])] = True
    connected[0] = False
    return _rgb(connected[labels] * 255.0)


def threshold(image: Map, level: float, _b: float) -> Map:
    """Binarised at ``level`` (sd-webui-controlnet's "threshold")."""
    return _rgb((_gray(image) > level) * 255.0)


def scribble_threshold(image: Map, level: float, _b: float) -> Map:
    """A dark-on-light scribble as the white-on-black map scribble ControlNets expect."""
    return _rgb((_gray(image) < level) * 255.0)


def blur_gaussian(image: Map, sigma: float, _b: float) -> Map:
    return np.asarray(Image.fromarray(image).filter(_gaussian(sigma)))


def _gaussian(sigma: float) -> object:
    from PIL import ImageFilter

    return ImageFilter.GaussianBlur(radius=max(0.0, float(sigma)))


def tile_resample(image: Map, down: float, _b: float) -> Map:
    """The tile ControlNet's input: the picture downsampled by ``down`` (and brought back to size later)."""
    factor = max(1.0, float(down))
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def color(image: Map, _a: float, _b: float) -> Map:
    """The T2I colour map: the picture in 64x64-pixel cells of their mean colour."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, w // 64), max(1, h // 64)), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.NEAREST))


PREPROCESSORS: dict[str, Preprocessor] = {
    p.name: p
    for p in (
        Preprocessor("none", none, resolution=False),
        Preprocessor("invert", invert),
        Preprocessor(
            "canny", canny, sliders=(Slider("Low Threshold", 100, 1, 255), Slider("High Threshold", 200, 1, 255))
        ),
        Preprocessor("threshold", threshold, sliders=(Slider("Binarization Threshold", 127, 0, 255),)),
        Preprocessor("scribble_threshold", scribble_threshold, sliders=(Slider("Threshold", 127, 0, 255),)),
        Preprocessor("blur_gaussian", blur_gaussian, sliders=(Slider("Sigma", 9.0, 0.01, 64.0, 0.01),)),
        Preprocessor(
            "tile_resample",
            tile_resample,
            resolution=False,
            sliders=(Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),),
        ),
        Preprocessor("color", color),
    )
}
REFERENCE_FIDELITY = Slider('Style Fidelity (only for "Balanced" mode)', 0.5, 0.0, 1.0, 0.01)
PREPROCESSORS.update(
    (p.name, p)
    for p in (
        Preprocessor("shuffle", image_maps.shuffle, uses_seed=True),
        Preprocessor("lineart_standard", image_maps.lineart_standard),
        Preprocessor("inpaint", image_maps.inpaint_hint, resolution=False, uses_mask=True),
        Preprocessor("inpaint_only", image_maps.inpaint_hint, resolution=False, uses_mask=True),
        Preprocessor("reference_only", none, resolution=False, sliders=(REFERENCE_FIDELITY,), model_free=True),
        Preprocessor("reference_adain", none, resolution=False, sliders=(REFERENCE_FIDELITY,), model_free=True),
        Preprocessor("reference_adain+attn", none, resolution=False, sliders=(REFERENCE_FIDELITY,), model_free=True),
    )
)
ALIASES = {
    "invert (from white bg & black line)": "invert",
    "t2ia_color_grid": "color",
    "tile": "tile_resample",
    "lineart_standard (from white bg & black line)": "lineart_standard",
    "inpaint_global_harmonious": "inpaint",
}


def find(name: str) -> Preprocessor:
    """A preprocessor by sd-webui-controlnet's name (or an alias it accepts); EaselError listing the choices."""
    key = (name or "none").strip()
    key = ALIASES.get(key, key).lower()
    if key in PREPROCESSORS:
        return PREPROCESSORS[key]
    from .annotators import LIBRARY  # detector models, found only with their weights (imported late: it uses us)

    if (annotator := LIBRARY.find(key)) is not None:
        return annotator
    raise EaselError(
        f"ControlNet preprocessor '{name}' is not available (Easel has: {', '.join(PREPROCESSORS)}; "
        "for others, upload a ready-made control map with preprocessor 'none')"
    )


def run(
    name: str,
    image: Image.Image,
    processor_res: int,
    threshold_a: float,
    threshold_b: float,
    mask: Image.Image | None = None,
    seed: int = 0,
) -> Image.Image:
    """The control map of ``image`` by preprocessor ``name`` at ``processor_res`` (short side; -1: 512).

    ``mask`` ("L", 255 = the area to change) reaches the preprocessors that use one as the alpha channel of their
    input (their map is then RGBA); ``seed`` the random ones.
    """
    pre = find(name)
    rgb = np.asarray(image.convert("RGB"))
    if pre.uses_mask:
        alpha = np.zeros(rgb.shape[:2], np.uint8)
        if mask is not None:
            alpha = np.asarray(mask.convert("L").resize(image.size, Image.NEAREST))
        rgb = np.dstack([rgb, alpha])
    a_default, b_default = pre.threshold_defaults()
    a = a_default if threshold_a is None or threshold_a < 0 else float(threshold_a)
    b = b_default if threshold_b is None or threshold_b < 0 else float(threshold_b)
    if pre.resolution:
        res = 512 if processor_res is None or processor_res <= 0 else int(processor_res)
        res = min(max(res, 64), 2048)
        h, w = rgb.shape[:2]
        scale = res / min(h, w)
        if abs(scale - 1.0) > 1e-6:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC))
    out = pre.run(rgb, a, b, seed=seed) if pre.uses_seed else pre.run(rgb, a, b)
    return Image.fromarray(np.ascontiguousarray(out).astype(np.uint8), "RGBA" if out.shape[2] == 4 else "RGB")
