"""Peak memory of one txt2img vs txt2img + img2img + inpaint on the same checkpoint (target ratio <= 1.05).

The three modes are pipeline views over one set of modules, so using all of them must not add a second copy of
any weight. The checkpoint is built here with random weights in the original single-file layout and loaded
through the same path as a real one, in a fresh child process so that building it does not count.

    python benchmarks/modes_memory.py                 # "small" SD1: real SD1.5 layout, UNet at half width
    python benchmarks/modes_memory.py --scale full    # the real SD1.5 sizes (about 4 GiB of fp32 weights)
    python benchmarks/modes_memory.py --scale tiny    # the test suite's tiny SD1 (memory noise dominates)
    python benchmarks/modes_memory.py --touch         # page all weights in first: count only what the modes add

"small" keeps every block, layer count, attention layout, the full CLIP-L text encoder and the full VAE of
SD1.5 and halves the UNet's channel widths (320/640/1280/1280 -> 160/320/640/640), so the weights (~1.7 GB)
dwarf the allocator's noise while a CPU still runs a few steps in seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_checkpoint(scale: str, path: Path) -> int:
    """Write a random-weight SD1 checkpoint; returns its parameter count."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.models.tiny_models import build_tiny_components, save_single_file
    from pipelines.models.tokenizers import load_clip_tokenizer

    if scale == "tiny":
        components = build_tiny_components("sd1", seed=0)
    else:
        configs = ROOT / "pipelines" / "configs" / "sd1"

        def config(name: str) -> dict:
            data = json.loads((configs / name / "config.json").read_text())
            return {k: v for k, v in data.items() if not k.startswith("_")}

        unet_config = config("unet")
        if scale == "small":
            unet_config["block_out_channels"] = [c // 2 for c in unet_config["block_out_channels"]]
        torch.manual_seed(0)
        text_config = CLIPTextConfig(**config("text_encoder"))
        scheduler_config = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
        components = {
            "unet": UNet2DConditionModel(**unet_config),
            "vae": AutoencoderKL(**config("vae")),
            "text_encoder": CLIPTextModel(text_config),
            "tokenizer": load_clip_tokenizer(),
            "scheduler": PNDMScheduler.from_config(scheduler_config),
        }
        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
    save_single_file("sd1", components, path)
    return sum(p.numel() for m in components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())


def measure(models: Path, size: int, steps: int, touch: bool) -> dict:
    """In this (fresh) process: load, txt2img, peak; then img2img + inpaint, peak again.

    Weights are memory-mapped, so a module first used by img2img (the VAE encoder) is paged in then; ``touch``
    reads every weight once after loading so that the comparison counts only what the modes themselves add.
    """
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.generate import Engine, EngineSettings
    from pipelines.models.checkpoints import HashCache
    from pipelines.models.manager import PipelineManager
    from pipelines.requests import GenerationRequest

    torch.set_grad_enabled(False)
    outputs = Path(tempfile.mkdtemp(prefix="easel-modes-memory-"))
    manager = PipelineManager(models, torch.device("cpu"), torch.float32, HashCache(outputs / "h.json"), 1)
    engine = Engine(manager, outputs, EngineSettings(preview_every=0, save_outputs=False))
    active = manager.activate("bench-sd1")
    if touch:
        for module in active.model.modules():
            for param in module.parameters():
                param.sum()
    after_load = _status_kib("VmRSS")
    unet_ptr = next(active.model.unet.parameters()).data_ptr()
    common = {"steps": steps, "width": size, "height": size, "seed": 1, "save": False, "prompt": "a lighthouse"}

    start = time.perf_counter()
    first = engine.generate(GenerationRequest(**common)).images[0]
    t_txt2img = time.perf_counter() - start
    peak_txt2img, rss_txt2img = _status_kib("VmHWM"), _status_kib("VmRSS")

    start = time.perf_counter()
    engine.generate(GenerationRequest(mode="img2img", init_image=first, denoising_strength=0.75, **common))
    mask = Image.fromarray(np.pad(np.full((size // 2, size // 2), 255, np.uint8), size // 4), "L")
    engine.generate(GenerationRequest(mode="inpaint", init_image=first, mask=mask, denoising_strength=0.75, **common))
    t_others = time.perf_counter() - start
    peak_all, rss_all = _status_kib("VmHWM"), _status_kib("VmRSS")

    ptrs = {"after all modes": next(active.model.unet.parameters()).data_ptr(), "loaded": unet_ptr}
    return {
        "weights_mib": sum(p.numel() * p.element_size() for m in active.model.modules() for p in m.parameters())
        / 2**20,
        "rss_after_load_mib": after_load / 1024,
        "peak_txt2img_mib": peak_txt2img / 1024,
        "rss_txt2img_mib": rss_txt2img / 1024,
        "peak_all_modes_mib": peak_all / 1024,
        "rss_all_modes_mib": rss_all / 1024,
        "ratio": peak_all / peak_txt2img,
        "one_unet_copy": len(set(ptrs.values())) == 1,
        "seconds_txt2img": t_txt2img,
        "seconds_img2img_inpaint": t_others,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("tiny", "small", "full"), default="small")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--touch", action="store_true", help="page every weight in before the first txt2img")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process' entry point
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.size, args.steps, args.touch)))
        return

    with tempfile.TemporaryDirectory(prefix="easel-modes-memory-") as tmp:
        models = Path(tmp)
        start = time.perf_counter()
        params = build_checkpoint(args.scale, models / "bench-sd1.safetensors")
        print(f"built a {args.scale} SD1 checkpoint: {params / 1e6:.0f} M params in {time.perf_counter() - start:.0f}s")
        child = [
            sys.executable,
            __file__,
            "--measure",
            str(models),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            *(["--touch"] if args.touch else []),
        ]
        out = subprocess.run(child, check=True, capture_output=True, text=True, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"weights paged in first      {args.touch}")
    print(f"weights in memory          {r['weights_mib']:8.0f} MiB")
    print(f"RSS after loading          {r['rss_after_load_mib']:8.0f} MiB")
    print(f"peak RSS, txt2img          {r['peak_txt2img_mib']:8.0f} MiB  ({r['seconds_txt2img']:.1f}s)")
    print(f"peak RSS, + img2img/inpaint{r['peak_all_modes_mib']:8.0f} MiB  ({r['seconds_img2img_inpaint']:.1f}s)")
    print(f"RSS now, txt2img vs all    {r['rss_txt2img_mib']:8.0f} vs {r['rss_all_modes_mib']:.0f} MiB")
    print(f"one UNet copy across modes {r['one_unet_copy']}")
    verdict = "OK" if r["ratio"] <= 1.05 else "OVER TARGET"
    print(f"ratio (all modes / txt2img) {r['ratio']:.3f}  target <= 1.05: {verdict}")


if __name__ == "__main__":
    main()
