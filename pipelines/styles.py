"""Prompt styles in A1111's ``styles.csv``: ``name,prompt,negative_prompt``, ``{prompt}`` marks where the prompt goes.

A style without ``{prompt}`` is appended after a comma. Several styles apply in the order picked. The file is
read on each use (it is small, and users edit it by hand) and written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import EaselError

PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")


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


def parse_styles_csv(text: str) -> list[PromptStyle]:
    """Styles in file order; rows without a name are skipped, missing columns read as empty."""
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    styles: list[PromptStyle] = []
    for row in reader:
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

    def styles(self) -> list[PromptStyle]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EaselError(f"could not read {self.path}: {exc}") from exc
        return parse_styles_csv(text)

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
            styles = [s for s in self.styles() if s.name != style.name] + [style]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".styles-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                    f.write(format_styles_csv(styles))
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
