"""Engine overhead vs a bare diffusers call, scheduler swap cost, and checkpoint switch times.

Prints medians from one run that alternates the engine and the baseline on the same model, seed and settings,
so machine noise hits both alike. Targets: engine/bare <= 1.02, scheduler swap < 10 ms.

    python benchmarks/overhead.py                       # tiny SD1 model at 256x256, 20 steps (CPU friendly)
    python benchmarks/overhead.py --size 512 --device cuda --precision fp16 --checkpoint my.safetensors
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.generate import Engine, EngineSettings  # noqa: E402
from pipelines.models.checkpoints import HashCache  # noqa: E402
from pipelines.models.devices import choose_device, choose_dtype  # noqa: E402
from pipelines.models.manager import PipelineManager  # noqa: E402
from pipelines.models.tiny_models import build_tiny_components, save_single_file  # noqa: E402
from pipelines.requests import GenerationRequest  # noqa: E402
from pipelines.sampling.samplers import SAMPLERS, build_scheduler  # noqa: E402
from pipelines.sampling.variations import variation_noise  # noqa: E402


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint file (default: build tiny ones)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--preview-every", type=int, default=EngineSettings().preview_every)
    parser.add_argument("--save", action="store_true", help="let the engine save PNGs (the bare call saves none)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    ckpts = work / "Stable-diffusion"
    ckpts.mkdir()
    if args.checkpoint:
        (ckpts / args.checkpoint.name).symlink_to(args.checkpoint.resolve())
        first = args.checkpoint.name
    else:
        save_single_file("sd1", build_tiny_components("sd1", seed=1), ckpts / "a.safetensors")
        first = "a.safetensors"
    save_single_file("sd1", build_tiny_components("sd1", seed=2), ckpts / "b.safetensors")

    device = choose_device(args.device)
    dtype = choose_dtype(device, args.precision)
    manager = PipelineManager(ckpts, device, dtype, HashCache(work / "hashes.json"), ram_cache_size=2)
    engine = Engine(manager, work / "outputs", EngineSettings(preview_every=args.preview_every, save_outputs=args.save))
    active = manager.activate(first)
    prompt, negative, seed, cfg = "a lighthouse on a cliff at dusk, oil painting", "blurry", 1234, 7.0

    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=args.steps,
        cfg_scale=cfg,
        width=args.size,
        height=args.size,
        sampler=args.sampler,
        save=args.save,
    )

    def bare() -> None:
        scheduler = build_scheduler(active.model.scheduler_config, args.sampler)
        pipe = manager.pipeline("txt2img", scheduler, active)
        pipe.set_progress_bar_config(disable=True)
        latents = variation_noise([seed], (4, args.size // 8, args.size // 8)).to(device, dtype)
        pipe(
            prompt=prompt,
            negative_prompt=negative,
            num_inference_steps=args.steps,
            guidance_scale=cfg,
            width=args.size,
            height=args.size,
            latents=latents,
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="pil",
        )

    def through_engine() -> None:
        engine.generate(request)

    bare()
    through_engine()  # warm-up both
    engine_times, bare_times = [], []
    for _ in range(args.repeats):
        engine_times.append(timed(through_engine))
        bare_times.append(timed(bare))
    e, b = statistics.median(engine_times), statistics.median(bare_times)
    print(
        f"device {device}, dtype {dtype}, {args.size}x{args.size}, {args.steps} steps, {args.sampler}, "
        f"params {sum(p.numel() for p in active.model.unet.parameters()) / 1e6:.1f}M (UNet)"
    )
    print(
        f"txt2img median: engine {e * 1000:.1f} ms, bare diffusers {b * 1000:.1f} ms, ratio {e / b:.3f} "
        f"(target <= 1.02){'  [engine saved PNGs]' if args.save else ''}"
    )

    for sampler in SAMPLERS:  # first use imports each scheduler module: not a swap cost
        build_scheduler(active.model.scheduler_config, sampler, "Automatic")
    swaps = []
    for _ in range(20):
        for sampler in SAMPLERS:
            swaps.append(timed(lambda s=sampler: build_scheduler(active.model.scheduler_config, s, "Automatic")))
    p95 = sorted(swaps)[int(len(swaps) * 0.95)]
    print(
        f"scheduler swap median {statistics.median(swaps) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms "
        f"over {len(swaps)} builds (target < 10 ms)"
    )

    manager.unload_all()
    manager.activate(first)
    cold = timed(lambda: manager.activate("b.safetensors"))  # b is not in RAM: read, convert, move
    cached = timed(lambda: manager.activate(first))  # first went to the RAM cache when b came in
    print(f"checkpoint switch: cold from disk {cold * 1000:.1f} ms, from the RAM cache {cached * 1000:.2f} ms")


if __name__ == "__main__":
    main()
