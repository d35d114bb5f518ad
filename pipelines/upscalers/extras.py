"""The Extras tab's upscale (and ``/extra-single-image``, ``/extra-batch-images``) as one engine job.

A model upscale needs the device, so it takes a turn in the engine's queue and holds the device lock like a
generation: the queue shows it, ``/interrupt`` and the UI's Interrupt stop it between tiles, and progress counts
tiles. Each source is decoded only when its turn comes. Saved results go to ``outputs/extras-images/`` with the
parameters in an ``extras`` PNG text chunk (A1111's "Postprocess ..." keys) and the source's own ``parameters``
kept, so PNG Info still shows how the picture was made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.errors import EaselError
from pipelines.imaging.uploads import DEFAULT_MAX_UPLOAD_PIXELS, load_user_image
from pipelines.imaging.upscale import SCALE_TO, UpscaleSpec, cover_size, upscale
from pipelines.metadata.infotext import quote, read_image_parameters
from pipelines.metadata.outputs import save_image
from pipelines.runtime.jobs import Job
from pipelines.upscalers.library import BUILTIN_UPSCALERS, UpscaleInterrupted

if TYPE_CHECKING:
    from pipelines.generate import Engine

log = logging.getLogger(__name__)
EXTRAS_FOLDER = "extras-images"
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FOLDER_IMAGES = 1000

ImageSource = Callable[[], Image.Image]
"""Decodes one source image when its turn comes (so a batch never holds every input at once)."""


@dataclass
class ExtrasResult:
    images: list[Image.Image]  # empty when the caller asked for paths only (a folder batch)
    infotexts: list[str]  # each result's "Postprocess ..." text
    paths: list[Path]
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


def extras_text(params: dict[str, object]) -> str:
    return ", ".join(f"{key}: {quote(str(value))}" for key, value in params.items())


def folder_sources(folder: Path, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> list[tuple[str, ImageSource]]:
    """The pictures directly inside ``folder`` (by name), each decoded defensively when its turn comes."""
    if not folder.is_dir():
        raise EaselError(f"input folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES and p.is_file())
    if not paths:
        raise EaselError(f"no pictures ({', '.join(FOLDER_SUFFIXES)}) in {folder}")
    if len(paths) > MAX_FOLDER_IMAGES:
        raise EaselError(f"{folder} holds {len(paths)} pictures; at most {MAX_FOLDER_IMAGES} are upscaled at once")

    def source(path: Path) -> ImageSource:
        return lambda: load_user_image(path, max_pixels)

    return [(path.name, source(path)) for path in paths]


def run_extras(
    engine: Engine,
    sources: Sequence[ImageSource],
    spec: UpscaleSpec,
    job: Job | None = None,
    save: bool = False,
    keep_images: bool = True,
) -> ExtrasResult:
    """Upscale every source as ``spec`` says, one engine turn for all; saves when ``save`` (and saving is on)."""
    library = engine.upscalers
    available = library.names()
    first, second = spec.upscalers(available)
    models = [name for name in (first, second if spec.blends_second else "None") if name not in BUILTIN_UPSCALERS]
    for name in models:
        library.find(name)
    job = Job() if job is None else job
    job.plan(len(sources))
    result = ExtrasResult([], [], [])
    with engine.queue.place(job, owner="extras") as place:
        if not engine.queue.wait_turn(place):
            job.set_status("interrupted")
            result.interrupted = True
            return result
        with engine.manager.device_lock:
            job.set_status("running")
            try:
                _upscale_all(engine, sources, spec, job, models, save, keep_images, result)
            except BaseException:
                job.set_status("failed")
                raise
    job.set_status("interrupted" if result.interrupted else "done")
    return result


def _upscale_all(
    engine: Engine,
    sources: Sequence[ImageSource],
    spec: UpscaleSpec,
    job: Job,
    models: list[str],
    save: bool,
    keep_images: bool,
    result: ExtrasResult,
) -> None:
    library = engine.upscalers
    when = datetime.now()
    done = 0

    def after_tile() -> None:
        nonlocal done
        done += 1
        job.advance(done)
        if job.interrupted:
            raise UpscaleInterrupted("the upscale was interrupted")

    for index, load in enumerate(sources):
        if job.interrupted:
            result.interrupted = True
            return
        image = load()
        size = spec.result_size(image.width, image.height)
        target = cover_size(image.size, size, spec.resize_mode == SCALE_TO and bool(spec.upscaling_crop))
        tiles = sum(library.tiles_for(name, image.size, target) for name in models)
        job.plan(len(sources), done + tiles)
        job.start_batch(index, done)
        try:
            big = upscale(image, spec, lambda im, to, name: library.upscale(im, to, name, after_tile), library.names())
        except UpscaleInterrupted:
            result.interrupted = True
            return
        text = extras_text(spec.parameters(image.width, image.height))
        if save and engine.settings.save_outputs:
            parameters = read_image_parameters(image) or ""
            path = save_image(big, engine.outputs_dir, EXTRAS_FOLDER, None, parameters, when, {"extras": text})
            result.paths.append(path)
        if keep_images:
            result.images.append(big)
        result.infotexts.append(text)
    job.finish_steps()
