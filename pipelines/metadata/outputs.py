"""Saving generated images: A1111's folder layout and numbering, metadata inside, never a lost or clobbered file.

Layout: `<outputs>/<mode folder>/YYYY-MM-DD/NNNNN-SEED.png`, numbered like A1111 (one past the highest
number already in the folder, whoever wrote it), so Easel can share an outputs folder with A1111/Forge. The
settings may name the files and the date folder otherwise (``pipelines.metadata.filenames``) and pick JPEG or
WebP, whose infotext goes in the EXIF UserComment as A1111 writes it.

Why it is careful: an artist's image must never be overwritten or half-written, even when several threads
or processes save into one folder at once. The PNG is written in full to a hidden temp file in the same
folder and fsynced; the final name is then claimed with `os.link`, which fails instead of replacing an
existing file, and the next number is tried. While choosing and claiming a number the folder is held
with `flock` (where the OS has it), so concurrent savers also get distinct numbers, not only names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.errors import EaselError
from pipelines.metadata.filenames import SaveOptions, image_stem, subfolder

try:
    import fcntl
except ImportError:  # Windows: names stay unique through os.link / O_EXCL; numbers may then repeat
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"^(\d+)(?:[-.]|$)")
_TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-[a-z0-9_]{8}\.(png|jpg|webp)$")
"""What ``tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".png")`` names a save's temp file: 8 of [a-z0-9_]."""
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
EXIF_MAX_BYTES = 65_000
"""A JPEG's EXIF block must fit one 64 KiB segment; longer infotext is cut (and logged) rather than lost whole."""
STALE_TEMP_SECONDS = 60.0
"""A temp file younger than this may be another process's save under way (a save takes well under a second)."""
_MAX_ATTEMPTS = 1000
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def next_sequence_number(folder: Path) -> int:
    """One past the highest leading number of any file in `folder` (0 when there is none), as A1111 counts."""
    highest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        match = _NUMBERED.match(name)
        if match is not None:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _png_info(infotext: str, chunks: Mapping[str, str] | None = None) -> PngInfo:
    """tEXt where the text is latin-1 (what most readers expect), iTXt (UTF-8) otherwise; empty texts left out."""
    info = PngInfo()
    for key, text in {"parameters": infotext, **(chunks or {})}.items():
        if not text:
            continue
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, text)
        else:
            info.add_text(key, text)
    return info


def user_comment(infotext: str) -> bytes:
    """EXIF UserComment as A1111 (piexif's ``UserComment.dump(..., encoding="unicode")``) writes it: UTF-16BE."""
    return b"UNICODE\0" + infotext.encode("utf-16-be")


def _exif(infotext: str) -> Image.Exif:
    comment = user_comment(infotext)
    if len(comment) > EXIF_MAX_BYTES:
        log.warning("infotext of %d characters cut to fit the EXIF block", len(infotext))
        comment = comment[: EXIF_MAX_BYTES - (EXIF_MAX_BYTES % 2)]
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = comment
    return exif


def _write(
    image: Image.Image, file: Any, infotext: str, options: SaveOptions, chunks: Mapping[str, str] | None
) -> None:
    """Encode ``image`` in the chosen format with its infotext where A1111 puts it for that format."""
    extension = options.extension
    if extension == "png":
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(file, format="PNG", pnginfo=_png_info(infotext, chunks))
    elif extension == "jpg":
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        image.save(file, format="JPEG", quality=options.jpeg_quality, exif=_exif(infotext))
    else:
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        quality = 100 if options.webp_lossless else options.jpeg_quality
        image.save(file, format="WEBP", quality=quality, lossless=options.webp_lossless, exif=_exif(infotext))


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive flock on the folder itself: serialises numbering across threads and processes, no lock file."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _claim(temp: Path, final: Path) -> None:
    """Give the finished temp file its final name, raising FileExistsError rather than replacing a file."""
    try:
        os.link(temp, final)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links on this file system (FAT, some network shares): reserve the name, then move
    fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    try:
        os.replace(temp, final)
    except OSError:
        final.unlink(missing_ok=True)  # the empty placeholder is ours: never leave it behind
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the new directory entry durable; not possible on every OS, and then not needed there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_unfinished_saves(outputs_dir: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the hidden temp PNGs that saves killed mid-way (``kill -9``, power loss) left in the date folders.

    Only where ``save_image`` writes (``<outputs>/<mode>/[<date>/]``), only names of its own temp pattern, only
    regular files (a symlink is never one of ours), never through a symlinked folder, and only files older than
    ``older_than`` seconds. The finished image of such a save, if it got its name, is a separate file and stays.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    for mode_folder in _real_subfolders(Path(outputs_dir)):
        for day_folder in [mode_folder, *_real_subfolders(mode_folder)]:  # the mode folder: save_to_dirs off
            for entry in _scan(day_folder):
                if not _TEMP_NAME.match(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime > cutoff:
                        continue
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed.append(Path(entry.path))
    if removed:
        log.warning(
            "removed %d unfinished image file(s) left by interrupted saves: %s",
            len(removed),
            ", ".join(str(p) for p in removed),
        )
    return removed


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def _real_subfolders(folder: Path) -> list[Path]:
    """Subfolders that are folders themselves, not symlinks to somewhere else."""
    return [Path(entry.path) for entry in _scan(folder) if entry.is_dir(follow_symlinks=False)]


def save_image(
    image: Image.Image,
    outputs_dir: Path,
    mode_folder: str,
    seed: int | None,
    infotext: str,
    when: datetime | None = None,
    chunks: Mapping[str, str] | None = None,
    *,
    options: SaveOptions | None = None,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Save `image` with its infotext (PNG `parameters` chunk, or EXIF UserComment); returns the new file's path.

    ``seed`` None names the file by its number alone (the Extras tab's, as A1111); ``chunks`` are more PNG text
    chunks (the Extras tab's ``extras``). ``options``: format and naming (PNG, ``NNNNN-SEED`` in a date folder
    when None); ``tags``: the values of the pattern's tags (``filenames.filename_tags``), ``[seed]`` being ``seed``.
    """
    if not mode_folder or mode_folder in (".", "..") or "/" in mode_folder or "\\" in mode_folder:
        raise ValueError(f"mode_folder must be one folder name, got {mode_folder!r}")
    options = SaveOptions() if options is None else options
    when = when or datetime.now()
    tags = {"seed": "" if seed is None else str(seed), **(tags or {})}
    folder = Path(outputs_dir) / mode_folder
    below = subfolder(options, tags, when)
    if below is not None:
        folder = folder / below
    extension = options.extension

    temp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=f".{extension}", dir=folder)
        temp = Path(temp_name)
        with os.fdopen(fd, "wb") as file:
            _write(image, file, infotext, options, chunks)
            file.flush()
            os.fsync(file.fileno())
        with _folder_lock(folder):
            number = next_sequence_number(folder)
            for _ in range(_MAX_ATTEMPTS):
                final = folder / f"{image_stem(options, tags, when, number)}.{extension}"
                try:
                    _claim(temp, final)
                except FileExistsError:
                    number = max(number + 1, next_sequence_number(folder))
                    continue
                break
            else:
                raise EaselError(f"Could not find a free file name in {folder} after {_MAX_ATTEMPTS} tries.")
    except OSError as error:
        reason = error.strerror or str(error)
        raise EaselError(f"Could not save the image in {folder}: {reason}. Check the outputs folder.") from error
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    _fsync_folder(folder)
    return final
