"""File naming patterns (A1111's tags), output formats and their infotext, as other readers find it."""

from __future__ import annotations

import base64
import io
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from pipelines.errors import EaselError
from pipelines.metadata.filenames import (
    NAME_MAX_BYTES,
    SaveOptions,
    check_format,
    check_pattern,
    expand_pattern,
    filename_tags,
    image_stem,
)
from pipelines.metadata.infotext import parse_infotext, read_image_parameters
from pipelines.metadata.outputs import remove_unfinished_saves, save_image
from pipelines.requests import GenerationRequest
from webui.api.routes_images import png_info_of
from webui.tabs.png_info import read_png_info

WHEN = datetime(2026, 3, 4, 5, 6, 7)
INFOTEXT = (
    "a lighthouse, ünïcode 灯台, (storm:1.2)\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, Model: tiny"
)


def tags(**overrides: str) -> dict[str, str]:
    request = GenerationRequest(prompt="a red fox, in snow", negative_prompt="ugly", steps=12, cfg_scale=6.5)
    values = filename_tags(request, 1234, "tiny-sd1", "6ce0161689", None)
    return {**values, **overrides}


def test_tags_expand_as_a1111_names_them() -> None:
    pattern = "[seed]-[prompt]-[model_name]-[model_hash]-[steps]-[cfg]-[sampler]-[width]x[height]-[date]-[datetime]"
    assert expand_pattern(pattern, tags(), WHEN) == (
        "1234-a_red_fox,_in_snow-tiny-sd1-6ce0161689-12-6.5-Euler_a-512x512-2026-03-04-20260304050607"
    )
    assert expand_pattern("[prompt_spaces]", tags(), WHEN) == "a red fox, in snow"
    assert expand_pattern("[prompt_words]", tags(), WHEN) == "a red fox in snow"
    assert expand_pattern("[datetime<%Y-%m>]", tags(), WHEN) == "2026-03"


def test_stem_numbers_first_and_empty_pattern_means_seed() -> None:
    assert image_stem(SaveOptions(), tags(), WHEN, 7) == "00007-1234"
    assert image_stem(SaveOptions(samples_filename_pattern="[model_name]"), tags(), WHEN, 12) == "00012-tiny-sd1"


@pytest.mark.parametrize(
    "prompt",
    ["../../etc/passwd", "..\\..\\windows", "/abs/path", "a\nb\0c", ".hidden", "con:nul|x?*<>"],
)
def test_hostile_prompts_never_leave_the_folder(prompt: str, tmp_path: Path) -> None:
    name = expand_pattern("[prompt_spaces]", tags(prompt_spaces=prompt), WHEN)
    assert "/" not in name and "\\" not in name and "\0" not in name and "\n" not in name
    assert not name.startswith(".")
    options = SaveOptions(samples_filename_pattern="[prompt_spaces]", directories_filename_pattern="[prompt]")
    path = save_image(
        Image.new("RGB", (8, 8)),
        tmp_path,
        "txt2img-images",
        1,
        "x",
        WHEN,
        options=options,
        tags=tags(prompt=prompt, prompt_spaces=prompt),
    )
    assert path.resolve().parent.parent == (tmp_path / "txt2img-images").resolve()


def test_long_prompts_are_capped_in_bytes() -> None:
    stem = image_stem(
        SaveOptions(samples_filename_pattern="[prompt_spaces] [prompt]"),
        tags(prompt="猫" * 500, prompt_spaces="猫" * 500),
        WHEN,
        1,
    )
    assert len(stem.encode()) <= NAME_MAX_BYTES


def test_patterns_and_formats_are_checked() -> None:
    assert check_pattern("p", "[seed]-[prompt_spaces]") == "[seed]-[prompt_spaces]"
    with pytest.raises(EaselError, match=r"unknown tag.*\[sede\]"):
        check_pattern("samples_filename_pattern", "[sede]")
    with pytest.raises(EaselError, match="longer than"):
        check_pattern("p", "x" * 500)
    with pytest.raises(EaselError, match="text"):
        check_pattern("p", 5)
    assert check_format("f", "JPEG") == "jpg" and check_format("f", "webp") == "webp"
    with pytest.raises(EaselError, match="png, jpg, webp"):
        check_format("samples_format", "gif")


def test_same_name_twice_gets_a_new_number_never_an_overwrite(tmp_path: Path) -> None:
    options = SaveOptions(samples_filename_pattern="[model_name]")
    first = save_image(
        Image.new("RGB", (8, 8), "red"), tmp_path, "txt2img-images", 5, "a", WHEN, options=options, tags=tags()
    )
    second = save_image(
        Image.new("RGB", (8, 8), "blue"), tmp_path, "txt2img-images", 5, "b", WHEN, options=options, tags=tags()
    )
    assert first != second and first.name == "00000-tiny-sd1.png" and second.name == "00001-tiny-sd1.png"
    assert Image.open(first).getpixel((0, 0)) == (255, 0, 0)


def test_save_to_dirs_off_and_a_folder_pattern(tmp_path: Path) -> None:
    flat = save_image(
        Image.new("RGB", (8, 8)), tmp_path, "txt2img-images", 3, "a", WHEN, options=SaveOptions(save_to_dirs=False)
    )
    assert flat.parent == tmp_path / "txt2img-images"
    monthly = SaveOptions(directories_filename_pattern="[datetime<%Y-%m>]-[model_name]")
    nested = save_image(
        Image.new("RGB", (8, 8)), tmp_path, "txt2img-images", 3, "a", WHEN, options=monthly, tags=tags()
    )
    assert nested.parent.name == "2026-03-tiny-sd1"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize(
    ("options", "pil_format"),
    [
        (SaveOptions(samples_format="jpg", jpeg_quality=90), "JPEG"),
        (SaveOptions(samples_format="webp", jpeg_quality=70), "WEBP"),
        (SaveOptions(samples_format="webp", webp_lossless=True), "WEBP"),
        (SaveOptions(), "PNG"),
    ],
)
def test_every_format_carries_infotext_the_readers_find(options: SaveOptions, pil_format: str, tmp_path: Path) -> None:
    image = Image.new("RGBA", (64, 64), (10, 200, 30, 255))
    path = save_image(image, tmp_path, "txt2img-images", 1234, INFOTEXT, WHEN, options=options)
    assert path.suffix == f".{options.extension}"
    with Image.open(path) as saved:
        assert saved.format == pil_format
        assert read_image_parameters(saved) == INFOTEXT
        text, fields = read_png_info(saved)  # the PNG Info tab
    assert text == INFOTEXT and fields == parse_infotext(INFOTEXT) and fields["Seed"] == "1234"
    answer = png_info_of(_b64(path), 10_000_000)  # POST /sdapi/v1/png-info
    assert answer["info"] == INFOTEXT
    assert answer["parameters"] == parse_infotext(INFOTEXT)
    if pil_format == "WEBP" and options.webp_lossless:
        with Image.open(path) as saved:
            assert saved.convert("RGB").getpixel((5, 5)) == (10, 200, 30)


def test_exif_user_comment_is_what_piexif_writes(tmp_path: Path) -> None:
    """A1111 writes ``piexif.helper.UserComment.dump(text, encoding="unicode")``: b"UNICODE\\0" + UTF-16 big-endian."""
    path = save_image(
        Image.new("RGB", (16, 16)), tmp_path, "t", 1, INFOTEXT, WHEN, options=SaveOptions(samples_format="jpg")
    )
    with Image.open(path) as saved:
        raw = saved.getexif().get_ifd(0x8769)[0x9286]
        assert raw == b"UNICODE\0" + INFOTEXT.encode("utf-16-be")
        assert 0x0110 not in saved.getexif()  # never an EXIF "Model" tag (DESIGN section 6)


def test_a1111_jpeg_with_little_endian_comment_reads_too(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + INFOTEXT.encode("utf-16-le")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", exif=exif)
    assert read_image_parameters(Image.open(io.BytesIO(buffer.getvalue()))) == INFOTEXT


def test_unfinished_jpeg_saves_are_cleaned_in_flat_folders_too(tmp_path: Path) -> None:
    folder = tmp_path / "txt2img-images"
    folder.mkdir()
    stale = folder / ".tmp-abcd1234.jpg"
    stale.write_bytes(b"half")
    assert remove_unfinished_saves(tmp_path, older_than=-1) == [stale]
