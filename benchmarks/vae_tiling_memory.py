"""Peak RSS and accuracy of a VAE decode (or encode) at 2048x2048: whole, diffusers' tiling, Easel's exact tiling.

Each variant runs in a fresh child process, so the peak (``ru_maxrss``) is that call's alone; the parent compares
the results with the whole one (PSNR of the 8-bit pictures for a decode, the largest latent difference for an
encode). The input is smooth (low-frequency waves, like a real picture's latent at tile scale). The VAE is built
here with random weights: the tiny test VAE (4 latent channels, like every SD VAE; 32-64 feature channels) by
default, or the real SD VAE's layout (128-512 channels) with ``--full``; both downsample by 8 like the real one.

    python benchmarks/vae_tiling_memory.py                      # tiny VAE, 2048x2048, 512 px tiles (SD1's)
    python benchmarks/vae_tiling_memory.py --full --size 1024   # the real VAE layout (a few GB untiled, fp32)
    python benchmarks/vae_tiling_memory.py --encode             # the encoder instead

Measured here (2 shared CPU cores, fp32, 512 px tiles; peak RSS of the process relative to the whole decode):

    tiny VAE 2048x2048       diffusers x0.23, 14.1 dB   exact x0.60, 88.2 dB   (whole: 3.1 GB)
    SD VAE layout 1024x1024  diffusers x0.40, 18.5 dB   exact x0.58, 89.8 dB   (whole: 4.6 GB)
    tiny VAE 2048 encode     diffusers x0.25, max latent diff 0.54   exact x0.75, 2.6e-06   (whole: 2.7 GB)

On the CPU the exact tiling keeps every tile's current feature map in RAM between layers (about two full-size maps
at the widest layer instead of the whole decode's four or five); on a GPU those maps wait in RAM and the device
holds one tile, which is what the memory policy's tiling is for.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = ("whole", "diffusers", "exact")


def _smooth(size: int, channels: int):  # noqa: ANN202 - torch is imported in the child only
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    waves = [torch.sin(2 * math.pi * (x * (c + 1) / 3 + y * (c % 2 + 1) / 4) + c) for c in range(channels)]
    return torch.stack(waves)[None] * 0.8


def _vae(full: bool):  # noqa: ANN202
    import torch

    if full:
        from diffusers import AutoencoderKL

        config = json.loads((ROOT / "pipelines/models/configs/sd1/vae/config.json").read_text())
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")}).eval()
    else:
        from pipelines.models.tiny_models import build_tiny_components

        vae = build_tiny_components("sd1", seed=0)["vae"]
    return vae.requires_grad_(False)


def _child(full: bool, size: int, tile: int, variant: str, encode: bool, out: str) -> dict:
    import numpy as np
    import torch

    from pipelines.imaging.latents import decode_latents, encode_pixels
    from pipelines.imaging.tiled_vae import enable_diffusers_tiling
    from pipelines.runtime.memory_policy import MemoryPlan
    from pipelines.runtime.placement import configure_vae

    torch.set_num_threads(2)
    vae = _vae(full)
    configure_vae(vae, MemoryPlan("resident", variant == "exact", False, tile, "benchmark"))
    if variant == "diffusers":
        enable_diffusers_tiling(vae, tile)
    if encode:  # a smooth picture in [-1, 1], 3 channels
        data = (_smooth(size, 3) * 1.2).clamp(-1, 1)
    else:
        data = _smooth(size // 8, vae.config.latent_channels) * vae.config.scaling_factor * 5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = encode_pixels(vae, data).numpy() if encode else np.asarray(decode_latents(vae, data)[0])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(out, result)
    return {"before_kib": before, "peak_kib": peak, "seconds": seconds, "shape": list(result.shape)}


def run(full: bool, size: int, tile: int, variant: str, encode: bool, out: Path) -> dict:
    args = f"{full}, {size}, {tile}, {variant!r}, {encode}, {str(out)!r}"
    code = f"import json, benchmarks.vae_tiling_memory as b; print(json.dumps(b._child({args})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def psnr(a, b) -> float:  # noqa: ANN001
    mse = float(((a.astype("float64") - b.astype("float64")) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (the policy's SD1 tile)")
    parser.add_argument("--full", action="store_true", help="the real SD VAE layout instead of the tiny one")
    parser.add_argument("--encode", action="store_true", help="measure the encoder instead of the decoder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which of whole,diffusers,exact to run")
    args = parser.parse_args()
    variants = args.variants.split(",")
    results: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            out = Path(tmp) / f"{variant}.npy"
            results[variant] = run(args.full, args.size, args.tile, variant, args.encode, out)
            arrays[variant] = np.load(out)
    what = f"{'SD VAE layout' if args.full else 'tiny VAE'} {'encode' if args.encode else 'decode'}"
    whole = results.get("whole")
    for variant, r in results.items():
        added = (r["peak_kib"] - r["before_kib"]) / 1024
        line = (
            f"{what} {args.size}x{args.size} {variant:>9} ({args.tile}px tiles): peak RSS {r['peak_kib'] / 1024:7.0f}"
            f" MiB (+{added:6.0f} MiB during the call), {r['seconds']:6.1f} s"
        )
        if whole is not None and variant != "whole":
            ratio = r["peak_kib"] / whole["peak_kib"]
            added_ratio = (r["peak_kib"] - r["before_kib"]) / max(1, whole["peak_kib"] - whole["before_kib"])
            if args.encode:
                diff = float(np.abs(arrays[variant] - arrays["whole"]).max())
                accuracy = f"max |latent diff| {diff:.2e}"
            else:
                accuracy = f"PSNR {psnr(arrays[variant], arrays['whole']):5.1f} dB"
            line += f"; vs whole: RSS x{ratio:.2f} (added x{added_ratio:.2f}), {accuracy}"
        print(line)


if __name__ == "__main__":
    main()
