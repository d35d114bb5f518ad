"""The outputs history: paging, filters, prompt search, thumbnails, trash and restore, refused paths, A1111 layouts."""

from __future__ import annotations

import io
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.errors import EaselError
from pipelines.metadata.history import (
    HistoryQuery,
    OutputHistory,
    OutputNotFoundError,
    OutputPathError,
    read_facts,
)
from pipelines.metadata.infotext import format_infotext
from pipelines.metadata.outputs import save_image

WORDS = ("red boat", "green forest", "blue lake")
MODELS = ("tiny-sd1", "realvis", "dreamy")


def infotext(prompt: str, seed: int, model: str) -> str:
    params = {"Steps": 4, "Sampler": "Euler", "CFG scale": 7, "Seed": seed, "Size": "8x8", "Model": model}
    return format_infotext(prompt, "lowres", params)


def write_png(path: Path, text: str | None, size: tuple[int, int] = (8, 8), mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", size, (10, 20, 30)).save(path, pnginfo=info)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """300 small PNGs over three modes and three days, written by ``save_image`` as generations write them.

    Each gets an mtime one second after the previous, so "newest first" has one right answer: the order made.
    """
    outputs = tmp_path_factory.mktemp("many") / "outputs"
    made: list[str] = []
    start = time.time() - 10_000
    modes = ("txt2img-images", "img2img-images", "inpaint-images")
    for i in range(300):
        day = datetime(2026, 11, 28 + i % 3, 12, 0)
        text = infotext(f"{WORDS[i % 3]} number {i}", 1000 + i, MODELS[i % 3])
        path = save_image(Image.new("RGB", (8, 8), (i % 256, 0, 0)), outputs, modes[i % 3], 1000 + i, text, day)
        os.utime(path, (start + i, start + i))
        made.append(path.relative_to(outputs).as_posix())
    return outputs, made


def test_pages_are_newest_first_and_cover_everything_once(many) -> None:
    outputs, made = many
    history = OutputHistory(outputs)
    first = history.page(None, 1, 50)
    assert first.total == 300 and first.pages == 6
    assert [item.path for item in first.items] == made[::-1][:50]
    seen = [item.path for page in range(1, 7) for item in history.page(None, page, 50).items]
    assert seen == made[::-1]
    last = history.page(None, 6, 50)
    assert len(last.items) == 50 and history.page(None, 7, 50).items == []
    item = first.items[0]
    assert item.facts.seed == 1299 and item.facts.prompt == "blue lake number 299" and item.facts.width == 8
    assert item.to_json()["size"] == "8x8" and item.to_json()["checkpoint"] == "dreamy"


def test_a_page_opens_only_its_own_files(many, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs, _ = many
    opened: list[Path] = []
    import pipelines.metadata.history as module

    real = module.read_facts
    monkeypatch.setattr(module, "read_facts", lambda path: opened.append(path) or real(path))
    history = OutputHistory(outputs)
    history.page(None, 2, 20)
    assert len(opened) == 20
    history.page(None, 2, 20)  # kept: nothing read again
    assert len(opened) == 20
    history.page(HistoryQuery(mode="img2img"), 1, 20)  # mode and date filters come from the folders
    assert len(opened) <= 40


def test_filters_mode_date_checkpoint_and_search(many) -> None:
    outputs, made = many
    history = OutputHistory(outputs)
    img2img = history.page(HistoryQuery(mode="img2img"), 1, 200)
    assert img2img.total == 100 and {i.file.mode for i in img2img.items} == {"img2img"}
    day = history.page(HistoryQuery(date="2026-11-29"), 1, 200)
    assert day.total == 100 and all(i.path.split("/")[1] == "2026-11-29" for i in day.items)
    assert history.page(HistoryQuery(date="2026-11"), 1, 10).total == 300
    assert history.page(HistoryQuery(date="2025"), 1, 10).total == 0
    model = history.page(HistoryQuery(checkpoint="REALVIS"), 1, 200)
    assert model.total == 100 and {i.facts.checkpoint for i in model.items} == {"realvis"}
    found = history.page(HistoryQuery(q="forest 7"), 1, 200)  # every word, anywhere in the prompt
    assert found.total > 0 and all("forest" in i.facts.prompt and "7" in i.facts.prompt for i in found.items)
    assert history.page(HistoryQuery(q="lowres"), 1, 10).total == 0  # the negative prompt is not searched
    both = history.page(HistoryQuery(mode="txt2img", q="Number 3"), 1, 200)
    expected = [p for p in made[::-1] if p.startswith("txt2img") and "3" in read_facts(outputs / p).prompt]
    assert [i.path for i in both.items] == expected and 0 < len(expected) < 100
    assert history.checkpoints() == ["dreamy", "realvis", "tiny-sd1"]
    assert history.dates() == ["2026-11-30", "2026-11-29", "2026-11-28"]


@pytest.mark.parametrize(
    ("query", "message"),
    [(HistoryQuery(mode="video"), "mode must be"), (HistoryQuery(date="yesterday"), "date must be")],
)
def test_bad_filters_say_what_is_wrong(tmp_path: Path, query: HistoryQuery, message: str) -> None:
    with pytest.raises(EaselError, match=message):
        OutputHistory(tmp_path).page(query)
    with pytest.raises(EaselError, match="per_page"):
        OutputHistory(tmp_path).page(None, 1, 10_000)


def test_new_and_removed_files_show_without_a_restart(tmp_path: Path) -> None:
    history = OutputHistory(tmp_path)
    assert history.page().total == 0
    first = write_png(tmp_path / "txt2img-images" / "2026-12-01" / "00000-1.png", infotext("cat", 1, "m"))
    assert [i.path for i in history.page().items] == ["txt2img-images/2026-12-01/00000-1.png"]
    write_png(tmp_path / "txt2img-images" / "2026-12-01" / "00001-2.png", infotext("dog", 2, "m"))
    assert history.page().total == 2
    first.unlink()
    assert [i.facts.prompt for i in history.page().items] == ["dog"]


def test_a1111_and_forge_layouts(tmp_path: Path) -> None:
    """Folders as A1111/Forge write them: dated sub folders, grids, extras without dates, JPEG/WebP with EXIF."""
    old = time.time() - 86400 * 30
    write_png(tmp_path / "txt2img-images" / "2024-05-01" / "00000-11.png", infotext("castle", 11, "sdxl"), mtime=old)
    write_png(tmp_path / "txt2img-grids" / "2024-05-01" / "grid-0000.png", infotext("castle", 11, "sdxl"), mtime=old)
    write_png(tmp_path / "img2img-images" / "2024-05-02" / "00000-12.png", infotext("inpainted", 12, "sd15"))
    write_png(tmp_path / "extras-images" / "00000.png", None)  # extras: no date folder, no parameters
    write_png(tmp_path / "txt2img-images" / "2024-05-01" / "model" / "00001-13.png", infotext("deep", 13, "x"))
    jpeg = tmp_path / "txt2img-images" / "2024-05-03" / "00002-14.jpg"
    jpeg.parent.mkdir(parents=True)
    exif = Image.Exif()
    comment = b"UNICODE\0" + infotext("a jpeg sunset", 14, "sdxl").encode("utf-16-be")
    exif.get_ifd(0x8769)[0x9286] = comment
    Image.new("RGB", (16, 8)).save(jpeg, exif=exif)
    (tmp_path / "txt2img-images" / "2024-05-01" / "notes.txt").write_text("not an image")
    (tmp_path / "log").mkdir()
    write_png(tmp_path / "log" / "images" / "x.png", None)  # not a mode folder: not listed
    write_png(tmp_path / "txt2img-images" / "2024-05-01" / ".tmp-abcdefgh.png", None)  # a save under way

    history = OutputHistory(tmp_path)
    items = {i.path: i for i in history.page(None, 1, 100).items}
    assert set(items) == {
        "txt2img-images/2024-05-01/00000-11.png",
        "txt2img-grids/2024-05-01/grid-0000.png",
        "img2img-images/2024-05-02/00000-12.png",
        "extras-images/00000.png",
        "txt2img-images/2024-05-01/model/00001-13.png",
        "txt2img-images/2024-05-03/00002-14.jpg",
    }
    assert items["txt2img-grids/2024-05-01/grid-0000.png"].file.mode == "grid"
    assert items["extras-images/00000.png"].file.mode == "extras"
    assert items["extras-images/00000.png"].file.date == datetime.now().strftime("%Y-%m-%d")
    assert items["txt2img-images/2024-05-03/00002-14.jpg"].facts.prompt == "a jpeg sunset"
    assert items["txt2img-images/2024-05-03/00002-14.jpg"].facts.width == 16
    assert history.page(HistoryQuery(mode="grid")).total == 1
    assert history.page(HistoryQuery(q="sunset")).total == 1
    assert history.page(HistoryQuery(date="2024-05-01")).total == 3


def test_thumbnails_are_made_once_and_small(tmp_path: Path) -> None:
    path = write_png(tmp_path / "txt2img-images" / "2026-12-01" / "00000-1.png", "x", size=(1024, 512))
    history = OutputHistory(tmp_path)
    rel = path.relative_to(tmp_path).as_posix()
    thumb = history.thumbnail(rel)
    assert thumb.parent == tmp_path / ".thumbnails"
    with Image.open(thumb) as small:
        assert small.format == "WEBP" and max(small.size) == 256 and small.size == (256, 128)
    stamp = thumb.stat().st_mtime_ns
    assert history.thumbnail(rel) == thumb and thumb.stat().st_mtime_ns == stamp
    assert history.page().total == 1  # the thumbnail folder is never listed as an output
    broken = tmp_path / "txt2img-images" / "2026-12-01" / "00001-2.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(EaselError, match="cannot be read"):
        history.thumbnail(broken.relative_to(tmp_path).as_posix())
    assert history.page().total == 2  # still listed, with empty facts
    assert next(i for i in history.page().items if i.path.endswith("00001-2.png")).facts.width == 0


def test_delete_trash_restore_and_empty(tmp_path: Path) -> None:
    history = OutputHistory(tmp_path)
    a = write_png(tmp_path / "txt2img-images" / "2026-12-01" / "00000-1.png", infotext("cat", 1, "m"))
    write_png(tmp_path / "txt2img-images" / "2026-12-01" / "00001-2.png", infotext("dog", 2, "m"))
    rel = a.relative_to(tmp_path).as_posix()
    data = a.read_bytes()
    history.thumbnail(rel)

    trashed = history.delete(rel)
    assert not a.exists() and history.page().total == 1
    assert [t.original for t in history.trash()] == [rel]
    assert (tmp_path / ".trash" / trashed.id).read_bytes() == data
    assert history.page(HistoryQuery(q="cat")).total == 0  # the trash is not part of the history

    assert history.restore(trashed.id) == rel
    assert a.read_bytes() == data and history.trash() == [] and history.page().total == 2
    assert [i.facts.prompt for i in history.page(HistoryQuery(q="cat")).items] == ["cat"]

    # deleted, then a new file took the name: restoring never overwrites it
    trashed = history.delete(rel)
    write_png(a, infotext("new cat", 3, "m"))
    restored = history.restore(trashed.id)
    assert restored == "txt2img-images/2026-12-01/00000-1-restored-1.png"
    assert (tmp_path / restored).read_bytes() == data and read_facts(a).prompt == "new cat"

    # two deletions of files with the same name both stay restorable
    first = history.delete(rel)
    write_png(a, infotext("third cat", 4, "m"))
    second = history.delete(rel)
    assert first.id != second.id and len(history.trash()) == 2
    with pytest.raises(OutputPathError):
        history.restore("../../etc/passwd.png")
    assert history.empty_trash() == 2
    assert history.trash() == [] and not (tmp_path / ".trash").exists()
    assert len(list((tmp_path / ".thumbnails").glob("*.webp"))) <= 2  # orphans pruned with the trash


def test_paths_that_leave_the_outputs_folder_are_refused(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    good = write_png(outputs / "txt2img-images" / "2026-12-01" / "00000-1.png", "x")
    secret = write_png(tmp_path / "secret.png", "private")
    (tmp_path / "secret.txt").write_text("private")
    (outputs / "txt2img-images" / "2026-12-01" / "link.png").symlink_to(secret)
    (outputs / "txt2img-images" / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (outputs / "txt2img-images" / "2026-12-01" / "page.html").write_text("<script>")
    history = OutputHistory(outputs)
    assert history.resolve("txt2img-images/2026-12-01/00000-1.png") == good
    refused = [
        "../secret.png",
        "txt2img-images/../../secret.png",
        "txt2img-images/2026-12-01/../../../secret.png",
        str(secret),
        "/etc/passwd",
        "C:/Windows/win.ini",
        "..\\secret.png",
        "txt2img-images//2026-12-01/00000-1.png",
        "./txt2img-images/2026-12-01/00000-1.png",
        "../secret.txt",
        "txt2img-images/2026-12-01/page.html",
        ".trash/x/txt2img-images/a.png",
        ".thumbnails/abc.webp",
        "txt2img-images/2026-12-01/00000-1.png\0.png",
        "",
    ]
    for path in refused:
        with pytest.raises(OutputPathError):
            history.resolve(path)
    for path in ("txt2img-images/2026-12-01/link.png", "txt2img-images/elsewhere/secret.png", "nothing/here.png"):
        with pytest.raises(OutputNotFoundError):
            history.resolve(path)
    listed = {i.path for i in history.page().items}
    assert listed == {"txt2img-images/2026-12-01/00000-1.png"}  # symlinks are never listed
    with pytest.raises(OutputNotFoundError):
        history.delete("txt2img-images/2026-12-01/link.png")
    assert secret.exists()


def test_png_with_parameters_after_the_image_data_is_still_listed(tmp_path: Path) -> None:
    """Some tools write the text chunk after IDAT: it is listed (parameters may be missing), never an error."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    path = tmp_path / "txt2img-images" / "x.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(buffer.getvalue())
    assert OutputHistory(tmp_path).page().total == 1
