"""Prompt styles in A1111's ``styles.csv``: ``name,prompt,negative_prompt``, ``{prompt}`` marks where the prompt goes.

A style without ``{prompt}`` is appended after a comma. Several styles apply in the order picked. The file is
read on each use (it is small, and users edit it by hand) and written atomically. A file that cannot be read as a
whole (a stray quote, a binary file) is reported and skipped, never fatal, and never rewritten: it may hold years
of someone's work, and fixing one quote by hand is all it needs.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import EaselError

log = logging.getLogger(__name__)
PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")


class StylesFileError(EaselError):
    """The styles file cannot be read as a whole: its styles are skipped and the file is left as it is."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_style(style_text: str, prompt: str) -> str:
    """Put ``prompt`` into a style's text: at ``{prompt}``, else style appended after a comma."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Sequence[PromptStyle]) -> tuple[str, str]:
    for style in styles:
        prompt = merge_style(style.prompt, prompt)
        negative_prompt = merge_style(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def _strict_rows(text: str, source: str) -> list[dict[str, str | None]] | None:
    """Rows read strictly, or None when only a quirk A1111's lenient reading accepts (``"a" b``) got in the way.

    Lenient csv reads everything after a quote that never closes into one field: silently, up to 128 KiB, and past
    that with an error about field limits. Strict reading says where it went wrong, so the user can fix it.
    """
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True, strict=True)
    rows: list[dict[str, str | None]] = []
    start = 1
    try:
        if reader.fieldnames is None:  # reads the header, so the first row's line is known
            return []
        start = reader.line_num + 1
        for row in reader:
            rows.append(row)
            start = reader.line_num + 1
    except csv.Error as exc:
        message = str(exc)
        if "unexpected end of data" in message:
            what = 'a quote (") opens a field that never closes, so the rest of the file would be one style'
        elif "field larger than field limit" in message:
            what = f'a field is longer than {csv.field_size_limit() // 1024} KiB (most often a stray quote (")'
            what += " that never closes, so the rest of the file reads as one field)"
        else:
            return None
        raise StylesFileError(
            f"{source}, line {start}: {what}. The styles file was skipped and left as it is: fix that line "
            '(a quote inside a quoted field is written "") and refresh.'
        ) from exc
    return rows


def parse_styles_csv(text: str, source: str = "styles.csv") -> list[PromptStyle]:
    """Styles in file order; rows without a name are skipped, missing columns read as empty.

    Raises StylesFileError, naming ``source`` and the line, for a file that cannot be read as a whole.
    """
    rows = _strict_rows(text, source)
    if rows is None:
        try:
            rows = list(csv.DictReader(io.StringIO(text), skipinitialspace=True))
        except csv.Error as exc:
            raise StylesFileError(
                f"{source} is not a readable CSV file ({exc}); it was skipped and left as it is"
            ) from exc
    styles: list[PromptStyle] = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            styles.append(PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or ""))
    return styles


def format_styles_csv(styles: Sequence[PromptStyle]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return out.getvalue()


class StyleLibrary:
    """The styles file: read on each call, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._logged: str | None = None  # the last problem logged, so a broken file is logged once, not per use

    def styles(self) -> list[PromptStyle]:
        """The file's styles ([] when there is none); StylesFileError when it cannot be read, logged once."""
        try:
            try:
                text = self.path.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise StylesFileError(f"could not read {self.path}: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise StylesFileError(f"{self.path} is not UTF-8 text; it was skipped and left as it is") from exc
            styles = parse_styles_csv(text, str(self.path))
        except StylesFileError as exc:
            if str(exc) != self._logged:
                self._logged = str(exc)
                log.warning("%s", exc)
            raise
        self._logged = None
        return styles

    def problem(self) -> str | None:
        """Why the styles file cannot be used, for the UI to show where styles are listed; None when it can."""
        try:
            self.styles()
        except StylesFileError as exc:
            return str(exc)
        return None

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def pick(self, names: Sequence[str]) -> list[PromptStyle]:
        by_name = {style.name: style for style in self.styles()}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise EaselError(f"no style named {', '.join(repr(n) for n in missing)} in {self.path.name}")
        return [by_name[name] for name in names]

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        return apply_styles(prompt, negative_prompt, self.pick(names)) if names else (prompt, negative_prompt)

    def save(self, style: PromptStyle) -> None:
        """Add a style, or replace the one with the same name."""
        if not style.name.strip():
            raise EaselError("give the style a name")
        with self._lock:
            try:
                current = self.styles()
            except StylesFileError as exc:  # rewriting it from what could be read would lose the rest
                raise StylesFileError(
                    f"The style was not saved, so as not to overwrite the styles file. {exc}"
                ) from exc
            styles = [s for s in current if s.name != style.name] + [style]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".styles-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                    f.write(format_styles_csv(styles))
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
