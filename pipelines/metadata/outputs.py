"""Saving generated images: A1111's folder layout and numbering, metadata inside, never a lost or clobbered file.

Layout: `<outputs>/<mode folder>/YYYY-MM-DD/NNNNN-SEED.png`, numbered like A1111 (one past the highest
number already in the folder, whoever wrote it), so Easel can share an outputs folder with A1111/Forge.

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

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.errors import EaselError

try:
    import fcntl
except ImportError:  # Windows: names stay unique through os.link / O_EXCL; numbers may then repeat
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"^(\d+)(?:[-.]|$)")
_TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-[a-z0-9_]{8}\.png$")
"""What ``tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".png")`` names a save's temp file: 8 of [a-z0-9_]."""
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

    Only where ``save_image`` writes (``<outputs>/<mode>/<date>/``), only names of its own temp pattern, only
    regular files (a symlink is never one of ours), never through a symlinked folder, and only files older than
    ``older_than`` seconds. The finished image of such a save, if it got its name, is a separate file and stays.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    for mode_folder in _real_subfolders(Path(outputs_dir)):
        for day_folder in _real_subfolders(mode_folder):
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
) -> Path:
    """Save `image` with its infotext in the `parameters` chunk; returns the new file's path.

    ``seed`` None names the file by its number alone (the Extras tab's, as A1111); ``chunks`` are more text chunks
    (the Extras tab's ``extras``).
    """
    if not mode_folder or mode_folder in (".", "..") or "/" in mode_folder or "\\" in mode_folder:
        raise ValueError(f"mode_folder must be one folder name, got {mode_folder!r}")
    folder = Path(outputs_dir) / mode_folder / (when or datetime.now()).strftime("%Y-%m-%d")
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")

    temp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".png", dir=folder)
        temp = Path(temp_name)
        with os.fdopen(fd, "wb") as file:
            image.save(file, format="PNG", pnginfo=_png_info(infotext, chunks))
            file.flush()
            os.fsync(file.fileno())
        with _folder_lock(folder):
            number = next_sequence_number(folder)
            for _ in range(_MAX_ATTEMPTS):
                final = folder / (f"{number:05d}.png" if seed is None else f"{number:05d}-{seed}.png")
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
