"""Drawing the X/Y/Z grid: cells in rows (Y) and columns (X) with their labels in a legible, scalable font.

The font is DejaVu Sans where the system has it (most Linux installs, via fonts-dejavu), else Pillow's own bundled
scalable font (Pillow >= 10.1 ships one), so the labels are readable at any size on a fresh machine too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",  # Fedora
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/Library/Fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",  # macOS
    os.path.join(os.environ.get("WINDIR", "C:/Windows"), "Fonts", "arial.ttf"),
)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font of ``size`` pixels: a system DejaVu Sans / Arial, else Pillow's bundled one."""
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            try:
                return ImageFont.truetype(candidate, size)
            except OSError:
                continue
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont, width: int) -> list[str]:
    """Words onto lines no wider than ``width`` (a word longer than that is split by characters)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            attempt = f"{line} {word}".strip()
            if draw.textlength(attempt, font=face) <= width or not line:
                line = attempt
            else:
                lines.append(line)
                line = word
            while draw.textlength(line, font=face) > width and len(line) > 1:
                cut = len(line)
                while cut > 1 and draw.textlength(line[:cut], font=face) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _text_block(lines: list[str], face: ImageFont.ImageFont, size: int) -> int:
    return len(lines) * int(size * 1.25) if lines and any(lines) else 0


def draw_grid(
    cells: Sequence[Sequence[Image.Image]],
    col_labels: Sequence[str],
    row_labels: Sequence[str],
    title: str = "",
    margin: int = 0,
    legend: bool = True,
) -> Image.Image:
    """``cells[row][col]`` pasted into one image, column labels above, row labels to the left, ``title`` on top."""
    rows, cols = len(cells), len(cells[0])
    cell_w = max(im.width for row in cells for im in row)
    cell_h = max(im.height for row in cells for im in row)
    size = max(14, min(48, round(min(cell_w, cell_h) / 11)))
    face = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    show_cols = legend and any(col_labels)
    show_rows = legend and any(row_labels)
    col_lines = [_wrap(probe, t, face, cell_w - 8) for t in col_labels] if show_cols else []
    top = max((_text_block(lines, face, size) for lines in col_lines), default=0) + (12 if show_cols else 0)
    left = min(max(cell_w, 192), 4 * size * 8) if show_rows else 0
    row_lines = [_wrap(probe, t, face, left - 16) for t in row_labels] if show_rows else []
    title_lines = _wrap(probe, title, face, left + cols * cell_w - 16) if legend and title else []
    title_h = _text_block(title_lines, face, size) + (12 if title_lines else 0)
    width = left + cols * cell_w + (cols - 1) * margin
    height = title_h + top + rows * cell_h + (rows - 1) * margin
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    line_h = int(size * 1.25)
    for i, line in enumerate(title_lines):
        draw.text((width / 2, 6 + i * line_h), line, font=face, fill=TEXT, anchor="ma")
    for col, lines in enumerate(col_lines):
        x = left + col * (cell_w + margin) + cell_w / 2
        y0 = title_h + top - 6 - _text_block(lines, face, size)
        for i, line in enumerate(lines):
            draw.text((x, y0 + i * line_h), line, font=face, fill=TEXT, anchor="ma")
    for row, lines in enumerate(row_lines):
        y = title_h + top + row * (cell_h + margin) + cell_h / 2 - _text_block(lines, face, size) / 2
        for i, line in enumerate(lines):
            draw.text((left - 8, y + i * line_h), line, font=face, fill=TEXT, anchor="ra")
    for row in range(rows):
        for col in range(cols):
            image = cells[row][col]
            grid.paste(image.convert("RGB"), (left + col * (cell_w + margin), title_h + top + row * (cell_h + margin)))
    return grid


def side_by_side(grids: Sequence[Image.Image], labels: Sequence[str], margin: int = 0) -> Image.Image:
    """The Z grids next to each other, each under its Z label (A1111's grid of grids)."""
    return draw_grid([list(grids)], list(labels), [""] * 1, margin=margin)
