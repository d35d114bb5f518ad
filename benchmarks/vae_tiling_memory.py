"""Peak RSS of a VAE decode at 2048x2048, whole vs tiled the way the memory policy tiles it (target ratio < 0.5).

Each variant runs in a fresh child process, so the peak (``ru_maxrss``) is that decode's alone. The VAE is built
here with random weights: the tiny test VAE (4 latent channels, like every SD VAE; 32-64 feature channels) by
default, or the real SD VAE's layout (128-512 channels) with ``--full``; both downsample by 8 like the real one.

    python benchmarks/vae_tiling_memory.py               # tiny VAE, 2048x2048, 512 px tiles (SD1's)
    python benchmarks/vae_tiling_memory.py --full --size 1024   # the real VAE layout (a few GB untiled, fp32)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _child(full: bool, size: int, tile: int | None) -> dict:
    import torch

    from pipelines.imaging.latents import decode_latents
    from pipelines.runtime.memory_policy import MemoryPlan
    from pipelines.runtime.placement import configure_vae

    torch.set_num_threads(2)
    if full:
        from diffusers import AutoencoderKL

        config = json.loads((ROOT / "pipelines/models/configs/sd1/vae/config.json").read_text())
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")}).eval()
    else:
        from pipelines.models.tiny_models import build_tiny_components

        vae = build_tiny_components("sd1", seed=0)["vae"]
    vae.requires_grad_(False)
    latents = torch.randn(
        1, vae.config.latent_channels, size // 8, size // 8, generator=torch.Generator().manual_seed(1)
    )
    configure_vae(vae, MemoryPlan("resident", tile is not None, False, tile or 512, "benchmark"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    image = decode_latents(vae, latents)[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"before_kib": before, "peak_kib": peak, "seconds": seconds, "size": list(image.size)}


def run(full: bool, size: int, tile: int | None) -> dict:
    code = f"import json, benchmarks.vae_tiling_memory as b; print(json.dumps(b._child({full}, {size}, {tile})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (the policy's SD1 tile)")
    parser.add_argument("--full", action="store_true", help="the real SD VAE layout instead of the tiny one")
    args = parser.parse_args()
    whole = run(args.full, args.size, None)
    tiled = run(args.full, args.size, args.tile)
    what = "SD VAE layout" if args.full else "tiny VAE"
    for name, r in (("whole", whole), (f"tiled {args.tile}px", tiled)):
        added = (r["peak_kib"] - r["before_kib"]) / 1024
        print(
            f"{what} {args.size}x{args.size} {name:>12}: peak RSS {r['peak_kib'] / 1024:8.0f} MiB "
            f"(+{added:7.0f} MiB during the decode), {r['seconds']:6.1f} s"
        )
    ratio = tiled["peak_kib"] / whole["peak_kib"]
    added_ratio = (tiled["peak_kib"] - tiled["before_kib"]) / max(1, whole["peak_kib"] - whole["before_kib"])
    print(f"peak RSS tiled / whole: {ratio:.2f} (process total), {added_ratio:.2f} (what the decode added)")


if __name__ == "__main__":
    main()
