"""Infotext: what we write must read back, and what A1111 wrote must read the way A1111 reads it."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.metadata.infotext import format_infotext, parse_infotext, read_image_parameters

A1111_MULTILINE = """masterpiece, best quality,
1girl, (red hair:1.2), looking at viewer
<lora:add_detail:0.6>
Negative prompt: lowres, bad anatomy,
worst quality
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3366997712, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Lora hashes: "add_detail: 7c6bad76eb54", Hires upscale: 2, Hires upscaler: Latent, Version: v1.10.1"""


def test_format_orders_keys_like_a1111_and_puts_version_last() -> None:
    params = {
        "Version": "easel-0.1",
        "Mask blur": 4,
        "Seed": 1234,
        "Denoising strength": 0.75,
        "Model": "v1-5-pruned",
        "Steps": 20,
        "Size": "512x512",
        "CFG scale": 7.0,
        "Schedule type": "Karras",
        "Sampler": "DPM++ 2M",
        "Model hash": "6ce0161689",
    }
    text = format_infotext("a cat", "blurry", params)
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned, Denoising strength: 0.75, Mask blur: 4, Version: easel-0.1"
    )


def test_format_omits_empty_negative_none_values_and_default_clip_skip() -> None:
    text = format_infotext("a cat", "", {"Steps": 4, "VAE": None, "Clip skip": 1, "Seed": 5, "CFG scale": 3})
    assert text == "a cat\nSteps: 4, CFG scale: 3, Seed: 5"
    assert "Clip skip: 2" in format_infotext("a", "", {"Steps": 4, "Clip skip": 2})


@pytest.mark.parametrize(
    ("value", "written"),
    [(7.0, "7"), (0.75, "0.75"), (0.1 + 0.2, "0.3"), (0.7500000001, "0.75"), (1e-07, "1e-07"), (True, "True")],
)
def test_format_prints_numbers_like_a1111(value: object, written: str) -> None:
    assert format_infotext("p", "", {"Steps": 1, "CFG scale": value, "Seed": 1}).endswith(
        f"CFG scale: {written}, Seed: 1"
    )


def test_format_quotes_values_that_would_break_the_line() -> None:
    params = {"Steps": 20, "Seed": 1, "Lora hashes": "name: abc123, other: def456", "Note": 'say "hi"', "X": "a\nb"}
    text = format_infotext("p", "", params)
    assert 'Lora hashes: "name: abc123, other: def456"' in text
    assert r'Note: "say \"hi\""' in text
    assert r'X: "a\nb"' in text
    assert text.count("\n") == 1  # the params stay on one line


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a cat", "blurry"),
        ("line one,\nline two\nline three", "bad hands,\nextra fingers"),
        ("猫、桜の木の下で、浮世絵スタイル 🌸🐱", "低品質, ぼやけた 😡"),
        ("(masterpiece:1.2), [blurry], <lora:x:0.5>, a: b, c", ""),
    ],
)
def test_round_trip(prompt: str, negative: str) -> None:
    params = {
        "Steps": 20,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 7.5,
        "Seed": 42,
        "Size": "512x768",
        "Model": "ノード・モデル",
        "Denoising strength": 0.75,
        "Lora hashes": "name: abc123, other: def456",
        "Emoji": "🎨, 🖌️",
        "Version": "easel-0.1",
    }
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    expected = {key: str(value) for key, value in params.items()}
    assert {key: parsed[key] for key in expected} == expected
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")


def test_parse_real_a1111_text_with_multiline_prompt_and_quoted_value() -> None:
    parsed = parse_infotext(A1111_MULTILINE)
    assert (
        parsed["Prompt"]
        == "masterpiece, best quality,\n1girl, (red hair:1.2), looking at viewer\n<lora:add_detail:0.6>"
    )
    assert parsed["Negative prompt"] == "lowres, bad anatomy,\nworst quality"
    assert parsed["Steps"] == "28"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == "6.5"
    assert parsed["Seed"] == "3366997712"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed["Clip skip"] == "2"
    assert parsed["Hires upscaler"] == "Latent"
    assert parsed["Version"] == "v1.10.1"


def test_parse_quoted_value_with_commas_and_colons() -> None:
    text = 'a cat\nSteps: 20, Lora hashes: "name: abc123, other: def456", Seed: 7, CFG scale: 7'
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "name: abc123, other: def456"
    assert parsed["Seed"] == "7"
    assert parsed["CFG scale"] == "7"


def test_parse_splits_old_combined_sampler_names() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")
    parsed = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M SDE Exponential, CFG scale: 7, Seed: 1")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M SDE", "Exponential")
    plain = parse_infotext("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    assert plain["Sampler"] == "Euler a" and "Schedule type" not in plain
    explicit = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Uniform, Seed: 1")
    assert (explicit["Sampler"], explicit["Schedule type"]) == ("DPM++ 2M Karras", "Uniform")


def test_parse_keeps_unknown_sampler_as_written() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: Restart Karras-ish, CFG scale: 7, Seed: 1")
    assert parsed["Sampler"] == "Restart Karras-ish"


def test_line_with_fewer_than_three_pairs_is_prompt_text() -> None:
    parsed = parse_infotext("portrait\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "portrait\nstyle: oil, mood: calm"
    assert parsed["Negative prompt"] == ""
    assert "style" not in parsed


@pytest.mark.parametrize(
    "text",
    ["", "just a prompt from another tool", "{'workflow': [1, 2, 3]}", "\n\n", "Negative prompt:", '"unterminated'],
)
def test_parse_foreign_text_never_raises(text: str) -> None:
    parsed = parse_infotext(text)
    assert set(parsed) >= {"Prompt", "Negative prompt"}


def test_parse_only_parameters_line() -> None:
    parsed = parse_infotext("Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 9")
    assert parsed["Prompt"] == ""
    assert parsed["Seed"] == "9"


def test_parse_windows_line_endings() -> None:
    parsed = parse_infotext("a\r\nb\r\nNegative prompt: c\r\nSteps: 1, Seed: 2, CFG scale: 3")
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["CFG scale"]) == ("a\nb", "c", "3")


def _reopen(image: Image.Image, **save_args: object) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, **save_args)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("text", ["a cat\nSteps: 1, Seed: 2, CFG scale: 3", "猫 🐱\nSteps: 1, Seed: 2, CFG scale: 3"])
def test_read_png_parameters_text_and_itxt(text: str) -> None:
    info = PngInfo()
    info.add_itxt("parameters", text)
    assert read_image_parameters(_reopen(Image.new("RGB", (8, 8)), format="PNG", pnginfo=info)) == text
    latin = PngInfo()
    latin.add_text("parameters", "plain\nSteps: 1, Seed: 2, CFG scale: 3")
    reopened = _reopen(Image.new("RGB", (8, 8)), format="PNG", pnginfo=latin)
    assert read_image_parameters(reopened) == "plain\nSteps: 1, Seed: 2, CFG scale: 3"


def _with_user_comment(comment: bytes, image_format: str) -> Image.Image:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    return _reopen(Image.new("RGB", (8, 8)), format=image_format, exif=exif)


UNICODE_TEXT = "夜の街 🌃, neon\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"
ASCII_TEXT = "night city, neon\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
@pytest.mark.parametrize(
    ("comment", "text"),
    [
        (b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be"), UNICODE_TEXT),  # what A1111 (piexif) writes
        (b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-le"), UNICODE_TEXT),
        (b"ASCII\0\0\0" + ASCII_TEXT.encode("ascii"), ASCII_TEXT),
        (b"\0" * 8 + UNICODE_TEXT.encode("utf-8"), UNICODE_TEXT),
        (UNICODE_TEXT.encode("utf-8"), UNICODE_TEXT),
    ],
    ids=["unicode-be", "unicode-le", "ascii", "undefined", "no-header"],
)
def test_read_exif_user_comment(image_format: str, comment: bytes, text: str) -> None:
    assert read_image_parameters(_with_user_comment(comment, image_format)) == text


def test_read_image_without_parameters() -> None:
    assert read_image_parameters(_reopen(Image.new("RGB", (8, 8)), format="PNG")) is None
    assert read_image_parameters(_reopen(Image.new("RGB", (8, 8)), format="JPEG")) is None
    assert read_image_parameters(Image.new("RGB", (8, 8))) is None
