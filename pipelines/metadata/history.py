"""Every image in the outputs folder, findable again: listing, filters, prompt search, thumbnails and a trash.

Works on the layout ``save_image`` writes and on A1111's and Forge's: ``<outputs>/<mode folder>/[<sub folder>/]file``
with mode folders ``txt2img-images``, ``img2img-images``, ``inpaint-images`` (Easel), ``extras-images``,
``txt2img-grids`` and ``img2img-grids``. A folder on the way named like a date (A1111's default ``[date]``) gives
the date; elsewhere the file's modification day does.

Why it is built this way: an outputs folder holds thousands of images, and a page must not cost a pass over them.
Folders are listed with ``os.scandir`` and kept per folder with the folder's mtime (a file added, removed or renamed
changes it), so a page after the first costs one ``stat`` per folder. An image's infotext is read (PNG text chunk,
or JPEG/WebP EXIF UserComment; the header only, no pixels decoded) only when a filter or a page needs it, and kept
by path, mtime and size. Thumbnails are made when first asked for and cached on disk in ``<outputs>/.thumbnails``.

Deleting moves a file to ``<outputs>/.trash/<when>-<id>/<its path>``, so restoring knows where it came from and two
deletions of files with one name never collide; only ``empty_trash`` removes files for good.

Paths from users (the UI, ``/easel/history``) are relative to the outputs folder and are checked by ``resolve``:
no absolute paths, no ``..``, no hidden parts, no symlinks on the way, image files only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image

from pipelines.errors import EaselError
from pipelines.metadata.infotext import parse_infotext, read_image_parameters

log = logging.getLogger(__name__)

IMAGE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".avif": "image/avif",
}
"""Extensions listed and served (A1111's ``samples_format`` choices), with their content types."""
MODE_FOLDERS: dict[str, str] = {
    "txt2img-images": "txt2img",
    "img2img-images": "img2img",
    "inpaint-images": "inpaint",
    "extras-images": "extras",
    "txt2img-grids": "grid",
    "img2img-grids": "grid",
}
"""Top-level folders of an outputs folder -> the mode the History tab filters by (A1111 keeps inpaint in img2img)."""
HISTORY_MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "extras", "grid")
TRASH_FOLDER = ".trash"
THUMBNAIL_FOLDER = ".thumbnails"
THUMBNAIL_SIZE = 256
MAX_DEPTH = 3  # sub folders below a mode folder that are looked into (A1111 patterns like [date]/[model_name])
MAX_PER_PAGE = 200
MAX_QUERY_LENGTH = 500
MAX_THUMBNAIL_SOURCE_PIXELS = 16384 * 16384  # larger images get no thumbnail (decoding them would cost GBs)
_DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_FILTER = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_TRASH_BATCH = re.compile(r"^(\d{8}-\d{6})-[0-9a-f]{8}$")


class OutputPathError(EaselError):
    """A path that does not name an image inside the outputs folder (malformed, hidden, or leading out of it)."""


class OutputNotFoundError(EaselError):
    """A well-formed path where there is no image (deleted meanwhile, or never there)."""


@dataclass(frozen=True)
class OutputFile:
    """One image file, as a folder listing knows it (no file opened)."""

    path: str  # relative to the outputs folder, with "/" separators
    mode: str  # one of HISTORY_MODES
    date: str  # YYYY-MM-DD
    mtime_ns: int
    bytes: int


@dataclass(frozen=True)
class ImageFacts:
    """What an image's header says: its size and the generation parameters written into it."""

    width: int = 0
    height: int = 0
    infotext: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    checkpoint: str = ""  # the infotext's "Model" (a checkpoint's name without extension)
    model_hash: str = ""
    seed: int | None = None


@dataclass(frozen=True)
class HistoryItem:
    file: OutputFile
    facts: ImageFacts

    @property
    def path(self) -> str:
        return self.file.path

    def to_json(self) -> dict[str, object]:
        """The shape ``GET /easel/history`` answers with, one item."""
        f, facts = self.file, self.facts
        return {
            "path": f.path,
            "mode": f.mode,
            "date": f.date,
            "modified": datetime.fromtimestamp(f.mtime_ns / 1e9).isoformat(timespec="seconds"),
            "bytes": f.bytes,
            "width": facts.width,
            "height": facts.height,
            "size": f"{facts.width}x{facts.height}" if facts.width else "",
            "prompt": facts.prompt,
            "negative_prompt": facts.negative_prompt,
            "checkpoint": facts.checkpoint,
            "model_hash": facts.model_hash,
            "seed": facts.seed,
            "infotext": facts.infotext,
        }


@dataclass(frozen=True)
class HistoryQuery:
    """Filters of one listing; empty strings mean "any". Checked by ``validated``."""

    mode: str = ""
    date: str = ""  # YYYY, YYYY-MM or YYYY-MM-DD
    checkpoint: str = ""  # part of the model name, or the model hash
    q: str = ""  # words that must all appear in the prompt

    def validated(self) -> HistoryQuery:
        mode, date = (self.mode or "").strip().lower(), (self.date or "").strip()
        checkpoint, q = (self.checkpoint or "").strip(), (self.q or "").strip()
        if mode in ("all", "any"):
            mode = ""
        if mode and mode not in HISTORY_MODES:
            raise EaselError(f"mode must be one of {', '.join(HISTORY_MODES)} (got {mode[:40]!r})")
        if date and not _DATE_FILTER.match(date):
            raise EaselError(f"date must be YYYY, YYYY-MM or YYYY-MM-DD (got {date[:40]!r})")
        if len(q) > MAX_QUERY_LENGTH or len(checkpoint) > MAX_QUERY_LENGTH:
            raise EaselError(f"search text is limited to {MAX_QUERY_LENGTH} characters")
        return HistoryQuery(mode, date, checkpoint, q)

    @property
    def needs_facts(self) -> bool:
        """Whether filtering must open the files (checkpoint and prompt live inside them)."""
        return bool(self.checkpoint or self.q)


@dataclass(frozen=True)
class HistoryPage:
    items: list[HistoryItem]
    total: int  # images matching the filters, on every page
    page: int  # 1-based
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass(frozen=True)
class TrashItem:
    id: str  # the file's path inside the trash folder: "<batch>/<original path>"
    original: str  # where it was, relative to the outputs folder
    deleted_at: datetime


@dataclass
class _Folder:
    mtime_ns: int
    files: list[OutputFile]
    subfolders: list[str]


def _scan(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        return []


def _day_of(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d")


def _folder_date(folder: str) -> str | None:
    """The date of the nearest folder named like one (A1111's ``[date]``, also below ``[date]/[model_name]``)."""
    return next((part for part in reversed(folder.split("/")) if _DATE_FOLDER.match(part)), None)


def _thumbnail_key(path: str, mtime_ns: int, size: int) -> str:
    """A thumbnail's file name: a new version of an image (or another image at that path) gets a new one."""
    return hashlib.sha256(f"{path}\0{mtime_ns}\0{size}".encode()).hexdigest()[:32]


def _first_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def read_facts(path: Path) -> ImageFacts:
    """Size and infotext from an image's header; an unreadable file gives empty facts, never an error."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            text = read_image_parameters(image) or ""
    except Exception:  # a damaged or foreign file is still listed, just without parameters
        return ImageFacts()
    if not text:
        return ImageFacts(width, height)
    fields = parse_infotext(text)
    return ImageFacts(
        width=width,
        height=height,
        infotext=text,
        prompt=fields.get("Prompt", ""),
        negative_prompt=fields.get("Negative prompt", ""),
        checkpoint=fields.get("Model", ""),
        model_hash=fields.get("Model hash", ""),
        seed=_first_int(fields.get("Seed", "")),
    )


def _matches(query: HistoryQuery, file: OutputFile, facts: ImageFacts | None) -> bool:
    if query.mode and file.mode != query.mode:
        return False
    if query.date and not file.date.startswith(query.date):
        return False
    if facts is None:
        return True
    if query.checkpoint:
        wanted = query.checkpoint.lower()
        if wanted not in facts.checkpoint.lower() and wanted != facts.model_hash.lower():
            return False
    if query.q:
        prompt = facts.prompt.lower()
        if not all(word in prompt for word in query.q.lower().split()):
            return False
    return True


class OutputHistory:
    """The images of one outputs folder. Safe to share between threads (the UI's and the API's)."""

    def __init__(self, outputs_dir: Path, thumbnails_dir: Path | None = None) -> None:
        self.outputs_dir = Path(outputs_dir)
        self.thumbnails_dir = Path(thumbnails_dir) if thumbnails_dir else self.outputs_dir / THUMBNAIL_FOLDER
        self._lock = threading.Lock()
        self._folders: dict[str, _Folder] = {}
        self._sorted: tuple[tuple[tuple[str, int], ...], list[OutputFile]] | None = None
        self._facts: dict[tuple[str, int, int], ImageFacts] = {}

    @property
    def trash_dir(self) -> Path:
        return self.outputs_dir / TRASH_FOLDER

    # -- listing ------------------------------------------------------------------------------------------
    def files(self) -> list[OutputFile]:
        """Every image, newest first (modification time, then path), from the cached folder listings."""
        with self._lock:
            stamps: list[tuple[str, int]] = []
            files: list[OutputFile] = []
            for entry in _scan(str(self.outputs_dir)):
                mode = MODE_FOLDERS.get(entry.name)
                if mode is not None and entry.is_dir(follow_symlinks=False):
                    self._walk(entry.name, mode, 0, stamps, files)
            key = tuple(stamps)
            if self._sorted is None or self._sorted[0] != key:
                files.sort(key=lambda f: (f.mtime_ns, f.path), reverse=True)
                self._sorted = (key, files)
                visited = {folder for folder, _ in stamps}  # forget folders and files that are gone
                self._folders = {k: v for k, v in self._folders.items() if k in visited}
                live = {f.path for f in files}
                self._facts = {k: v for k, v in self._facts.items() if k[0] in live}
            return self._sorted[1]

    def _walk(self, folder: str, mode: str, depth: int, stamps: list[tuple[str, int]], out: list[OutputFile]) -> None:
        """Add ``folder``'s images and its sub folders' to ``out``; listings reused while the folder's mtime holds."""
        full = os.path.join(self.outputs_dir, folder)
        try:
            info = os.stat(full, follow_symlinks=False)
        except OSError:
            return
        if not stat.S_ISDIR(info.st_mode):
            return
        cached = self._folders.get(folder)
        if cached is None or cached.mtime_ns != info.st_mtime_ns:
            cached = self._list_folder(folder, mode, info.st_mtime_ns)
            self._folders[folder] = cached
        stamps.append((folder, info.st_mtime_ns))
        out.extend(cached.files)
        if depth < MAX_DEPTH:
            for sub in cached.subfolders:
                self._walk(sub, mode, depth + 1, stamps, out)

    def _list_folder(self, folder: str, mode: str, mtime_ns: int) -> _Folder:
        folder_date = _folder_date(folder)
        files: list[OutputFile] = []
        subfolders: list[str] = []
        for entry in _scan(os.path.join(self.outputs_dir, folder)):
            if entry.name.startswith("."):  # a save's temp file, or anything hidden
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(f"{folder}/{entry.name}")
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_TYPES:
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):  # a symlink is never listed: it could point anywhere
                continue
            date = folder_date or _day_of(info.st_mtime_ns)
            files.append(OutputFile(f"{folder}/{entry.name}", mode, date, info.st_mtime_ns, info.st_size))
        return _Folder(mtime_ns, files, subfolders)

    def facts(self, file: OutputFile) -> ImageFacts:
        """The image's size and parameters, read once per version of the file."""
        key = (file.path, file.mtime_ns, file.bytes)
        with self._lock:
            known = self._facts.get(key)
        if known is not None:
            return known
        facts = read_facts(self.outputs_dir / file.path)
        with self._lock:
            self._facts[key] = facts
        return facts

    def page(self, query: HistoryQuery | None = None, page: int = 1, per_page: int = 48) -> HistoryPage:
        """One page of the images matching ``query``, newest first. Only filters on the checkpoint or the prompt
        open files beyond the page's own (once each: what they hold is kept)."""
        query = (query or HistoryQuery()).validated()
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise EaselError(f"per_page must be between 1 and {MAX_PER_PAGE} (got {per_page})")
        if page < 1:
            raise EaselError(f"page must be 1 or more (got {page})")
        matching = [f for f in self.files() if _matches(query, f, None)]
        if query.needs_facts:
            matching = [f for f in matching if _matches(query, f, self.facts(f))]
        start = (page - 1) * per_page
        items = [HistoryItem(f, self.facts(f)) for f in matching[start : start + per_page]]
        return HistoryPage(items, len(matching), page, per_page)

    def item(self, path: str) -> HistoryItem:
        """One image by its path (checked as ``resolve`` does)."""
        full = self.resolve(path)
        info = full.stat()
        mode = MODE_FOLDERS.get(path.split("/", 1)[0], "")
        date = _folder_date(path.rsplit("/", 1)[0]) or _day_of(info.st_mtime_ns)
        file = OutputFile(path, mode, date, info.st_mtime_ns, info.st_size)
        return HistoryItem(file, self.facts(file))

    def dates(self) -> list[str]:
        """Days that have images, newest first."""
        return sorted({f.date for f in self.files()}, reverse=True)

    def checkpoints(self) -> list[str]:
        """Model names the images were made with (reads every image's header once)."""
        return sorted({self.facts(f).checkpoint for f in self.files()} - {""}, key=str.lower)

    # -- paths from users -------------------------------------------------------------------------------------
    def resolve(self, path: str, in_trash: bool = False) -> Path:
        """The file an outputs-relative path names, refusing anything that is not an image inside the folder.

        Refused (OutputPathError): absolute paths, ``..``, empty or hidden parts (``.trash`` only with
        ``in_trash``), backslashes, NUL, other extensions. OutputNotFoundError: no regular file there, or a
        symlink anywhere on the way (one could point out of the folder).
        """
        if not isinstance(path, str) or not path or len(path) > 1024 or "\0" in path or "\\" in path:
            raise OutputPathError("not a path to an image inside the outputs folder")
        parts = path.split("/")
        if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
            raise OutputPathError("not a path to an image inside the outputs folder: absolute paths are refused")
        if any(part in ("", ".", "..") for part in parts):
            raise OutputPathError("not a path to an image inside the outputs folder: '..' and empty parts are refused")
        hidden = [i for i, part in enumerate(parts) if part.startswith(".")]
        if hidden != ([0] if in_trash and parts[0] == TRASH_FOLDER else []) or (in_trash and parts[0] != TRASH_FOLDER):
            raise OutputPathError("not a path to an image inside the outputs folder")
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_TYPES:
            raise OutputPathError(f"only images ({', '.join(IMAGE_TYPES)}) are served from the outputs folder")
        current = self.outputs_dir
        for part in parts:
            current = current / part
            try:
                info = os.lstat(current)
            except OSError:
                raise OutputNotFoundError(f"no image at {path}") from None
            if stat.S_ISLNK(info.st_mode):
                raise OutputNotFoundError(f"no image at {path}")
        if not stat.S_ISREG(info.st_mode):
            raise OutputNotFoundError(f"no image at {path}")
        root = os.path.realpath(self.outputs_dir)
        if not os.path.realpath(current).startswith(root + os.sep):  # belt and braces: no link was followed above
            raise OutputPathError("not a path to an image inside the outputs folder")
        return current

    # -- thumbnails ---------------------------------------------------------------------------------------------
    def thumbnail(self, path: str, in_trash: bool = False) -> Path:
        """A small WebP of the image (at most THUMBNAIL_SIZE a side), made on first request and kept on disk."""
        full = self.resolve(path, in_trash)
        info = full.stat()
        thumb = self.thumbnails_dir / f"{_thumbnail_key(path, info.st_mtime_ns, info.st_size)}.webp"
        if thumb.is_file():
            return thumb
        try:
            with Image.open(full) as image:
                if image.width * image.height > MAX_THUMBNAIL_SOURCE_PIXELS:
                    raise EaselError(f"{path} is too large to preview ({image.width}x{image.height})")
                image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode at a reduced scale
                image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                small = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
        except EaselError:
            raise
        except Exception as exc:
            raise EaselError(f"{path} cannot be read as an image ({type(exc).__name__})") from exc
        self.thumbnails_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".thumb-", suffix=".webp", dir=self.thumbnails_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                small.save(handle, format="WEBP", quality=80)
            os.replace(temp, thumb)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise EaselError(f"could not write a thumbnail in {self.thumbnails_dir}: {exc.strerror}") from exc
        return thumb

    # -- trash ----------------------------------------------------------------------------------------------------
    def delete(self, path: str) -> TrashItem:
        """Move an image to the trash (restorable); its folder's listing refreshes by itself (mtime)."""
        full = self.resolve(path)
        batch = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        target = self.trash_dir / batch / path
        try:
            self._ensure_trash()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(full, target)
        except OSError as exc:
            raise EaselError(f"could not move {path} to the trash: {exc.strerror}") from exc
        log.info("moved %s to %s", path, target)
        return TrashItem(f"{batch}/{path}", path, datetime.now())

    def _ensure_trash(self) -> None:
        info = os.lstat(self.trash_dir) if os.path.lexists(self.trash_dir) else None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            raise OSError(0, f"{self.trash_dir} is not a folder (a symlink or a file); move it away")
        self.trash_dir.mkdir(exist_ok=True)

    def trash(self) -> list[TrashItem]:
        """What the trash holds, most recently deleted first."""
        items: list[TrashItem] = []
        if not self.trash_dir.is_dir() or self.trash_dir.is_symlink():
            return items
        for batch in _scan(str(self.trash_dir)):
            match = _TRASH_BATCH.match(batch.name)
            if match is None or not batch.is_dir(follow_symlinks=False):
                continue
            when = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
            for relative in self._files_below(Path(batch.path), 0):
                items.append(TrashItem(f"{batch.name}/{relative}", relative, when))
        items.sort(key=lambda t: (t.deleted_at, t.id), reverse=True)
        return items

    def _files_below(self, folder: Path, depth: int, prefix: str = "") -> Iterable[str]:
        for entry in _scan(str(folder)):
            name = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False) and depth <= MAX_DEPTH:
                yield from self._files_below(Path(entry.path), depth + 1, f"{name}/")
            elif entry.is_file(follow_symlinks=False) and os.path.splitext(entry.name)[1].lower() in IMAGE_TYPES:
                yield name

    def restore(self, trash_id: str) -> str:
        """Put a trashed image back where it was; under a new name when that one is taken. Returns its path."""
        source = self.resolve(f"{TRASH_FOLDER}/{trash_id}", in_trash=True)
        batch, _, original = trash_id.partition("/")
        if not _TRASH_BATCH.match(batch) or not original:
            raise OutputPathError("not an item of the trash")
        self._check_restorable(original)
        target_rel = original
        stem, ext = os.path.splitext(original)
        for n in range(1, 1000):
            target = self.outputs_dir / target_rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, target)  # never replaces a file that appeared there meanwhile
                break
            except FileExistsError:
                target_rel = f"{stem}-restored-{n}{ext}"
            except OSError as exc:
                if target.exists():
                    target_rel = f"{stem}-restored-{n}{ext}"
                    continue
                try:  # no hard links on this file system: the name is free, move it there
                    os.rename(source, target)
                    break
                except OSError:
                    raise EaselError(f"could not restore {original}: {exc.strerror}") from exc
        else:
            raise EaselError(f"could not find a free name to restore {original}")
        source.unlink(missing_ok=True)
        self._prune_empty(source.parent)
        log.info("restored %s as %s", trash_id, target_rel)
        return target_rel

    def _check_restorable(self, original: str) -> None:
        """The trashed file's old path must itself be a plain one (no hidden or odd parts to be written to)."""
        parts = original.split("/")
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise OutputPathError("not an item of the trash")
        current = self.outputs_dir
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise OutputPathError(f"cannot restore into {original}: a folder on the way is a symlink")

    def _prune_empty(self, folder: Path) -> None:
        """Remove folders the trash no longer needs, up to (not including) the trash folder itself."""
        trash = self.trash_dir
        while folder != trash and trash in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def empty_trash(self) -> int:
        """Delete everything in the trash for good; the number of images removed. Thumbnails of them go too."""
        count = len(self.trash())
        trash = self.trash_dir
        if os.path.lexists(trash):
            if trash.is_symlink() or not trash.is_dir():
                raise EaselError(f"{trash} is not a folder (a symlink or a file); move it away")
            try:
                shutil.rmtree(trash)
            except OSError as exc:
                raise EaselError(f"could not empty the trash: {exc.strerror}") from exc
        self.prune_thumbnails()
        log.info("emptied the trash: %d image(s) deleted", count)
        return count

    def prune_thumbnails(self) -> int:
        """Delete cached thumbnails of images that are neither in the outputs folder nor in the trash any more."""
        keep = {_thumbnail_key(f.path, f.mtime_ns, f.bytes) for f in self.files()}
        for item in self.trash():
            rel = f"{TRASH_FOLDER}/{item.id}"
            try:
                info = os.stat(self.outputs_dir / rel)
            except OSError:
                continue
            keep.add(_thumbnail_key(rel, info.st_mtime_ns, info.st_size))
        removed = 0
        cutoff = time.time() - 60
        for entry in _scan(str(self.thumbnails_dir)):
            stem, ext = os.path.splitext(entry.name)
            if ext != ".webp" or stem in keep or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.name.startswith(".") and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue  # a thumbnail another request is writing right now
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
        return removed
