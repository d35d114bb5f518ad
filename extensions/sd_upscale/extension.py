"""SD upscale, built in: upscale a picture with a chosen upscaler, then repaint it with img2img tile by tile.

A1111's img2img script of the same name. The tab's width and height are the tile size; each tile is an img2img
generation of the tab's prompt at its denoising strength, and the tiles are cross-faded over their overlap
(``pipelines.upscalers.sd_upscale``), so no seam shows. As A1111: the upscaled size is the picture's times the
scale factor rounded down to a multiple of 8 ("None" repaints the picture at its own size), tiles are seeded in
row order from the seed (tile ``k`` of batch size ``b``: ``seed + k // b + k % b``), and the batch count makes that
many upscales, the ``n``-th from ``seed + n``. The result is saved to ``outputs/img2img-images/`` with the first
tile's infotext, A1111's ``SD upscale overlap`` / ``SD upscale upscaler`` keys and ``Script: SD upscale``.

API: ``script_name: "sd upscale"``, ``script_args`` ``[info, overlap, upscaler_index, scale_factor]`` as A1111's:
``info`` is ignored (a label), ``upscaler_index`` an index into ``/sdapi/v1/upscalers`` or an upscaler's name.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from PIL import Image

from pipelines.errors import EaselError
from pipelines.fields import MAX_SEED, Widget
from pipelines.hooks import ScriptArg, ScriptRunner
from pipelines.imaging.pixels import has_alpha
from pipelines.requests import GenerationRequest, GenerationResult
from pipelines.upscalers.sd_upscale import DEFAULT_OVERLAP, MAX_SCALE, SdUpscalePlan, plan_sd_upscale, sd_upscale

TITLE = "SD upscale"
INFO = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"
MAX_OVERLAP = 1024


class _Interrupted(Exception):
    """Raised between tiles once the job is interrupted: the picture being repainted is dropped."""


def _whole(value: Any, what: str) -> int:
    """An A1111 client's int: 64, 64.0 or "64"; EaselError naming the arg otherwise."""
    if isinstance(value, bool):
        raise EaselError(f"{TITLE}: {what} must be a whole number (got {value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EaselError(f"{TITLE}: {what} must be a whole number (got {value!r})") from None
    if not math.isfinite(number) or number != int(number):
        raise EaselError(f"{TITLE}: {what} must be a whole number (got {value!r})")
    return int(number)


def _scale(value: Any) -> float:
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise EaselError(f"{TITLE}: the scale factor must be a number (got {value!r})") from None
    if isinstance(value, bool) or not math.isfinite(scale):
        raise EaselError(f"{TITLE}: the scale factor must be a number (got {value!r})")
    return scale


def pick_upscaler(value: Any, names: list[str]) -> str:
    """A1111's ``upscaler_index``: a position in the upscaler list, or a name (any case)."""
    listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        wanted = value.strip().lower()
        match = next((n for n in names if n.lower() == wanted), None)
        if match is None:
            raise EaselError(f"{TITLE}: unknown upscaler '{value}' (available: {listed})")
        return match
    index = _whole(value, "the upscaler index")
    if not 0 <= index < len(names):
        raise EaselError(f"{TITLE}: upscaler index {index} is out of range (available: {listed})")
    return names[index]


def _flattened(image: Image.Image) -> Image.Image:
    """Transparency onto white, as A1111 flattens the init image (its default img2img background colour)."""
    if not has_alpha(image):
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def _with_script_key(infotext: str) -> str:
    """``Script: SD upscale`` added before ``Version``, as the X/Y/Z plot marks its grids."""
    head, sep, version = infotext.rpartition(", Version: ")
    return f"{head}, Script: {TITLE}{sep}{version}" if sep else f"{infotext}, Script: {TITLE}"


def _repaint(
    big: Image.Image,
    plan: SdUpscalePlan,
    tile_request: GenerationRequest,
    start: int,
    batch: int,
    runner: ScriptRunner,
    tiles: list[GenerationResult],
    first_part: int,
    parts: int,
) -> Image.Image:
    """One upscale's repaint: each tile an img2img generation (its results appended to ``tiles``), blended.

    A1111 repaints tiles in batches of the batch size, each batch seeded one on from the last batch's first seed:
    tile ``k`` gets ``start + k // batch + k % batch``. Easel repaints them one by one with those same seeds.
    """
    job = runner.job

    def repaint(tile: Image.Image, _seed: int) -> Image.Image:
        k = len(tiles)
        seed = (start + k // batch + k % batch) % (MAX_SEED + 1)
        with job.part(first_part + k, parts):
            result = runner.generate(
                replace(tile_request, init_image=tile, width=tile.width, height=tile.height, seed=seed)
            )
        if not result.images:
            raise _Interrupted
        tiles.append(result)
        return result.images[0]

    def after_tile() -> None:
        if job.interrupted:
            raise _Interrupted

    if job.interrupted:
        raise _Interrupted
    return sd_upscale(big, plan, lambda image, _size: image, repaint, start, after_tile)


def run(request: GenerationRequest, args: list[Any], runner: ScriptRunner) -> GenerationResult:
    _info, overlap, upscaler, scale = args[:4]
    base = request.validated()  # a concrete seed, and the init image checked
    if base.mode != "img2img" or base.init_image is None:
        raise EaselError(f"{TITLE} works in img2img, on an init image")
    overlap = _whole(overlap, "the tile overlap")
    if not 0 <= overlap <= MAX_OVERLAP:
        raise EaselError(f"{TITLE}: the tile overlap must be between 0 and {MAX_OVERLAP} (got {overlap})")
    scale = _scale(scale)
    name = pick_upscaler(upscaler, runner.upscalers())
    init = _flattened(base.init_image)
    plan = plan_sd_upscale(init.size, scale, base.width, base.height, overlap, resize=name != "None")
    extra = {**base.extra_params, "SD upscale overlap": overlap, "SD upscale upscaler": name}
    tile_request = replace(base, extra_params=extra, batch_count=1, batch_size=1, save=False, resize_mode=0)
    batch = base.batch_size
    upscales = base.batch_count  # A1111's n_iter: that many upscales of the same picture, seeds moving on by one
    first_part = 1 if name != "None" else 0
    parts = first_part + upscales * plan.tiles
    job = runner.job
    done: list[GenerationResult] = []
    big: Image.Image | None = init
    if name != "None":  # one upscale serves every repaint; "None" repaints the picture as it is
        with job.part(0, parts):
            big = runner.upscale(init, plan.size, name)
    images: list[Image.Image] = []
    seeds: list[int] = []
    infotexts: list[str] = []
    paths: list[Any] = []
    interrupted = big is None
    for n in range(upscales if big is not None else 0):
        assert big is not None
        start = (base.seed + n) % (MAX_SEED + 1)
        tiles: list[GenerationResult] = []
        try:
            image = _repaint(big, plan, tile_request, start, batch, runner, tiles, first_part + n * plan.tiles, parts)
        except _Interrupted:
            interrupted = True
        done += tiles
        if interrupted:
            break
        text = _with_script_key(tiles[0].infotexts[0])
        saved = runner.save_image(image, text, base, start)
        images.append(image)
        seeds.append(start)
        infotexts.append(text)
        paths += [saved] if saved else []
    return GenerationResult.combined(
        base,
        done,
        images,
        seeds,
        infotexts,
        paths,
        interrupted=interrupted,
        subseeds=[base.subseed] * len(images),
        prompts=[base.prompt] * len(images),
        negative_prompts=[base.negative_prompt] * len(images),
    )


def _upscaler_widget(catalog: Any) -> Widget:
    return Widget("radio", "Upscaler", "upscaler_index", choices=lambda: catalog.upscalers(), index=True)


def _args(catalog: Any) -> list[ScriptArg]:
    """A1111's args in its order; ``info`` is the label above the controls (its value is ignored)."""
    return [
        ScriptArg(Widget("textbox", "Info", "info"), INFO),
        ScriptArg(Widget("slider", "Tile overlap", "overlap", 0, 256, 16), DEFAULT_OVERLAP),
        ScriptArg(_upscaler_widget(catalog), 0),
        ScriptArg(Widget("slider", "Scale Factor", "scale_factor", 1.0, float(min(4, MAX_SCALE)), 0.05), 2.0),
    ]


def setup(ctx: Any) -> None:
    catalog = ctx.catalog
    args = _args(catalog)

    def ui(tab: str) -> list[Any]:
        from .ui import build_ui

        return build_ui(tab, args)

    ctx.script(TITLE, run, args, modes=("img2img",), ui=ui)
