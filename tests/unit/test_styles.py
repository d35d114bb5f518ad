"""A broken styles.csv is reported with where it breaks, skipped, and left exactly as it is on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.conditioning.styles import PromptStyle, StyleLibrary, StylesFileError, parse_styles_csv

HEADER = "name,prompt,negative_prompt\n"


def _big_file_with_a_stray_quote(path: Path) -> str:
    """About 220 KB of styles; row 4 opens a quoted field that never closes, so it swallows the rest of the file."""
    rows = [f"style{i},a painting of {{prompt}} {'in detail ' * 10},lowres" for i in range(2000)]
    rows[3] = 'broken,"a stray quote, {prompt},lowres'
    text = HEADER + "\n".join(rows) + "\n"
    path.write_text(text)
    return text


def test_a_field_over_the_csv_limit_is_a_styles_error_not_a_crash(tmp_path: Path) -> None:
    """csv.Error ('field larger than field limit') escaped as is, and stopped the UI from being built."""
    path = tmp_path / "styles.csv"
    text = _big_file_with_a_stray_quote(path)
    assert len(text) > 200_000
    library = StyleLibrary(path)
    with pytest.raises(StylesFileError, match=r"styles\.csv.*line 5") as error:
        library.styles()
    assert "field larger than" not in str(error.value)  # said in Easel's words
    assert library.problem() == str(error.value)
    with pytest.raises(StylesFileError):
        library.save(PromptStyle("new", "x"))  # never rewritten from what could be read of it
    assert path.read_text() == text


def test_an_unclosed_quote_is_reported_even_when_the_file_is_small(tmp_path: Path) -> None:
    """A small file with a stray quote parsed "fine" and silently lost every style after it."""
    path = tmp_path / "styles.csv"
    path.write_text(HEADER + 'a,"oil {prompt},\nb,watercolor,\nc,ink,\n')
    with pytest.raises(StylesFileError, match="line 2.*never closes"):
        StyleLibrary(path).styles()


def test_files_a1111_reads_still_read(tmp_path: Path) -> None:
    text = HEADER + 'a,"x ""quoted"" {prompt}",\nb,word "inside",\nc,"multi\nline",neg\nd,"late" quote,\n'
    assert [s.name for s in parse_styles_csv(text)] == ["a", "b", "c", "d"]
    library = StyleLibrary(tmp_path / "missing.csv")
    assert library.styles() == [] and library.problem() is None
