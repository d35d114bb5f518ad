"""History's first page on a big outputs folder, against listing and loading every image.

Builds N PNGs (A1111 layout, infotext in each, 512x512; a smooth pattern so 2,000 of them take seconds to write and
little disk; listing reads headers only, so pixel content does not change those numbers, only the thumbnails')
in a temp folder, then times, in one run:

- baseline: what a naive gallery does, open every file and read its parameters, then sort;
- cold first page: a fresh ``OutputHistory`` (scan + the page's own headers), then its thumbnails;
- warm page: the same history object again (cached listings, one ``stat`` per folder);
- a prompt search, cold (reads every header once) and warm.

Target: the cold first page well under the baseline (ratio printed), the warm page in milliseconds.

    python benchmarks/history_page.py               # 2000 images of 512x512
    python benchmarks/history_page.py --count 5000 --size 256 --folder /path/to/an/outputs/folder
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.metadata.history import HistoryQuery, OutputHistory, read_facts  # noqa: E402
from pipelines.metadata.infotext import format_infotext  # noqa: E402

PER_PAGE = 36


def build(outputs: Path, count: int, size: int) -> None:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pattern = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    pattern = pattern.astype(np.uint8)
    start = datetime(2026, 1, 1)
    for i in range(count):
        day = start + timedelta(days=i // 100)
        folder = outputs / ("txt2img-images", "img2img-images")[i % 2] / day.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        params = {"Steps": 20, "Sampler": "Euler a", "Seed": i, "Size": f"{size}x{size}", "Model": f"model{i % 5}"}
        info.add_text("parameters", format_infotext(f"prompt number {i}, castle", "lowres", params))
        path = folder / f"{i:05d}-{i}.png"
        Image.fromarray(np.roll(pattern, i, axis=1)).save(path, pnginfo=info, compress_level=1)
        stamp = time.time() - (count - i)
        os.utime(path, (stamp, stamp))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--folder", type=Path, default=None, help="an existing outputs folder (nothing is built)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        outputs = args.folder or Path(tmp) / "outputs"
        if args.folder is None:
            t, _ = timed(lambda: build(outputs, args.count, args.size))
            print(f"built {args.count} PNGs of {args.size}x{args.size} in {t:.1f}s")

        def baseline() -> list:
            found = [p for p in outputs.rglob("*.png") if not any(part.startswith(".") for part in p.parts)]
            facts = [(p.stat().st_mtime_ns, read_facts(p)) for p in found]
            return sorted(facts, key=lambda pair: pair[0], reverse=True)

        base_t, listed = timed(baseline)
        history = OutputHistory(outputs, Path(tmp) / "thumbs")
        cold_t, page = timed(lambda: history.page(None, 1, PER_PAGE))
        thumbs_t, _ = timed(lambda: [history.thumbnail(item.path) for item in page.items])
        warm_t, _ = timed(lambda: history.page(None, 1, PER_PAGE))
        warm2_t, _ = timed(lambda: history.page(None, 5, PER_PAGE))
        search = HistoryQuery(q="number 1999")
        search_cold_t, found = timed(lambda: history.page(search, 1, PER_PAGE))
        search_warm_t, _ = timed(lambda: history.page(search, 1, PER_PAGE))
        fresh = OutputHistory(outputs, Path(tmp) / "thumbs")
        fresh.page(None, 1, PER_PAGE)
        cached_thumbs_t, _ = timed(lambda: [fresh.thumbnail(item.path) for item in page.items])

        print(f"images: {len(listed)}, page size {PER_PAGE}")
        print(f"baseline, open every image and sort:  {base_t * 1000:8.1f} ms")
        print(f"first page, cold (scan + 36 headers): {cold_t * 1000:8.1f} ms   ratio {cold_t / base_t:.3f}")
        print(f"  its 36 thumbnails, made:            {thumbs_t * 1000:8.1f} ms")
        print(f"  its 36 thumbnails, from the cache:  {cached_thumbs_t * 1000:8.1f} ms")
        print(f"first page again, warm:               {warm_t * 1000:8.1f} ms")
        print(f"page 5 (its own headers read now):   {warm2_t * 1000:8.1f} ms")
        print(f"prompt search, cold (every header):   {search_cold_t * 1000:8.1f} ms   ({found.total} found)")
        print(f"prompt search, warm:                  {search_warm_t * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
