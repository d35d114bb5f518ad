"""Saving images: A1111 numbering, metadata inside, and no image ever lost, clobbered or half-written."""

from __future__ import annotations

import multiprocessing
import os
import re
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from pipelines.errors import EaselError
from pipelines.metadata import outputs as outputs
from pipelines.metadata.outputs import next_sequence_number, remove_unfinished_saves, save_image

WHEN = datetime(2024, 5, 17, 13, 45)
INFOTEXT = "a cat\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 16x16"


def _image(value: int = 128) -> Image.Image:
    return Image.new("RGB", (16, 16), (value, 255 - value, 7))


def _day_folder(root: Path) -> Path:
    return root / "txt2img-images" / "2024-05-17"


def _leftover_temps(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".tmp")]


def test_layout_and_first_number(tmp_path: Path) -> None:
    path = save_image(_image(), tmp_path, "txt2img-images", 42, INFOTEXT, when=WHEN)
    assert path == _day_folder(tmp_path) / "00000-42.png"
    assert path.is_file()


def test_numbering_continues_after_existing_files_even_foreign_ones(tmp_path: Path) -> None:
    folder = _day_folder(tmp_path)
    folder.mkdir(parents=True)
    for name in ("00003-111.png", "00007-from-a1111.jpg", "00012.png", "grid-0099.png", "123abc.png", "notes.txt"):
        (folder / name).write_bytes(b"not ours")
    assert next_sequence_number(folder) == 13
    path = save_image(_image(), tmp_path, "txt2img-images", 5, INFOTEXT, when=WHEN)
    assert path.name == "00013-5.png"


def test_two_saves_with_the_same_seed_get_different_names(tmp_path: Path) -> None:
    first = save_image(_image(1), tmp_path, "txt2img-images", 42, INFOTEXT, when=WHEN)
    second = save_image(_image(2), tmp_path, "txt2img-images", 42, INFOTEXT, when=WHEN)
    assert (first.name, second.name) == ("00000-42.png", "00001-42.png")
    assert Image.open(first).getpixel((0, 0)) == (1, 254, 7)
    assert Image.open(second).getpixel((0, 0)) == (2, 253, 7)


@pytest.mark.parametrize(
    "infotext",
    [INFOTEXT, "桜の下の猫 🐱🌸\nNegative prompt: ぼやけた\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1"],
    ids=["latin-1", "unicode"],
)
def test_metadata_reads_back(tmp_path: Path, infotext: str) -> None:
    path = save_image(_image(), tmp_path, "img2img-images", 1, infotext, when=WHEN)
    with Image.open(path) as image:
        assert image.text["parameters"] == infotext
        assert 0x0110 not in image.getexif()  # never an EXIF "Model" tag
        assert "exif" not in image.info


def test_alpha_and_unusual_modes_are_saved(tmp_path: Path) -> None:
    rgba = save_image(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), tmp_path, "txt2img-images", 1, INFOTEXT, when=WHEN)
    assert Image.open(rgba).getpixel((0, 0)) == (1, 2, 3, 4)
    cmyk = save_image(Image.new("CMYK", (8, 8)), tmp_path, "txt2img-images", 2, INFOTEXT, when=WHEN)
    assert Image.open(cmyk).mode == "RGB"


def test_eight_threads_save_concurrently_without_losing_any(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results.append(save_image(_image(index * 20), tmp_path, "txt2img-images", 7, f"image {index}", when=WHEN))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert len(set(results)) == 8
    folder = _day_folder(tmp_path)
    assert sorted(p.name for p in results) == sorted(os.listdir(folder))
    assert sorted(int(p.name[:5]) for p in results) == list(range(8))  # distinct numbers, not only names
    texts = set()
    for path in results:
        with Image.open(path) as image:
            image.load()  # fully readable, not truncated
            texts.add(image.text["parameters"])
    assert texts == {f"image {i}" for i in range(8)}
    assert not _leftover_temps(folder)


def _save_in_process(args: tuple[str, int]) -> str:
    root, index = args
    return str(save_image(_image(index), Path(root), "txt2img-images", 3, f"process {index}", when=WHEN))


def test_processes_saving_into_one_folder_get_distinct_files(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_save_in_process, [(str(tmp_path), i) for i in range(8)])
    assert len(set(paths)) == 8
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.text["parameters"] == f"process {index}"


def test_an_existing_file_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _day_folder(tmp_path)
    folder.mkdir(parents=True)
    precious = folder / "00000-9.png"
    precious.write_bytes(b"an artist's earlier image")
    # Simulate a scan that misses the file (as a racing writer would): the claim itself must refuse.
    real = outputs.next_sequence_number
    calls: list[Path] = []

    def stale_first(folder: Path) -> int:
        calls.append(folder)
        return 0 if len(calls) == 1 else real(folder)

    monkeypatch.setattr(outputs, "next_sequence_number", stale_first)
    path = save_image(_image(), tmp_path, "txt2img-images", 9, INFOTEXT, when=WHEN)
    assert path.name == "00001-9.png"
    assert len(calls) == 2  # the stale number was tried, refused, and the folder rescanned
    assert precious.read_bytes() == b"an artist's earlier image"
    assert not _leftover_temps(folder)


def test_fallback_without_hard_links_still_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(outputs.os, "link", no_links)
    folder = _day_folder(tmp_path)
    folder.mkdir(parents=True)
    precious = folder / "00000-9.png"
    precious.write_bytes(b"keep me")
    monkeypatch.setattr(outputs, "next_sequence_number", lambda f: 0)  # always the taken number first
    path = save_image(_image(), tmp_path, "txt2img-images", 9, INFOTEXT, when=WHEN)
    assert path.name == "00001-9.png"
    assert precious.read_bytes() == b"keep me"
    assert Image.open(path).text["parameters"] == INFOTEXT
    assert not _leftover_temps(folder)


def test_temp_file_is_removed_when_encoding_fails(tmp_path: Path) -> None:
    broken = _image()
    broken.im = None  # type: ignore[assignment]  # makes PIL fail mid-save
    broken.readonly = 0
    with pytest.raises(Exception):  # noqa: B017 - any failure, as long as nothing is left behind
        save_image(broken, tmp_path, "txt2img-images", 1, INFOTEXT, when=WHEN)
    folder = _day_folder(tmp_path)
    assert os.listdir(folder) == []


def test_unwritable_outputs_folder_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_bytes(b"a file where the outputs folder should be")
    with pytest.raises(EaselError, match="Could not save the image"):
        save_image(_image(), blocker, "txt2img-images", 1, INFOTEXT, when=WHEN)


def test_date_folder_defaults_to_today(tmp_path: Path) -> None:
    path = save_image(_image(), tmp_path, "txt2img-images", 1, INFOTEXT)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name)


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b"])
def test_mode_folder_must_be_one_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        save_image(_image(), tmp_path, bad, 1, INFOTEXT, when=WHEN)


def test_leftovers_of_a_killed_save_are_removed_at_start_and_nothing_else(tmp_path: Path) -> None:
    """``kill -9`` between writing the hidden temp PNG and claiming its name leaves ``.tmp-XXXXXXXX.png`` behind."""
    outputs_dir = tmp_path / "outputs"
    save_image(_image(), outputs_dir, "txt2img-images", 1, INFOTEXT, when=WHEN)
    folder = _day_folder(outputs_dir)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)  # exactly what save_image makes
    os.close(fd)
    leftover = Path(name)
    recent = folder / ".tmp-recent01.png"  # a save under way in another process right now
    kept = [
        folder / ".tmp-notours.txt",
        folder / ".tmp-toolongname.png",
        folder / "00007-3.png",
        outputs_dir / ".tmp-abcdefgh.png",  # not in a date folder: Easel never writes there
    ]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / ".tmp-zzzzzzzz.png"
    for path in (*kept, target):
        path.write_bytes(b"x")
    old = time.time() - 3600
    for path in (leftover, *kept, target):
        os.utime(path, (old, old))
    recent.write_bytes(b"x")
    (folder / ".tmp-symlink1.png").symlink_to(target)  # a link is not a file of ours: neither it nor its target goes
    (outputs_dir / "img2img-images").symlink_to(outside, target_is_directory=True)  # never followed out
    (outside / "2024-05-17").mkdir()
    stray = outside / "2024-05-17" / ".tmp-qqqqqqqq.png"
    stray.write_bytes(b"x")
    os.utime(stray, (old, old))

    assert remove_unfinished_saves(outputs_dir) == [leftover]
    assert not leftover.exists()
    assert all(p.exists() for p in (*kept, recent, target, stray, folder / ".tmp-symlink1.png"))
    assert (folder / "00000-1.png").is_file()
    assert remove_unfinished_saves(tmp_path / "no-such-folder") == []
