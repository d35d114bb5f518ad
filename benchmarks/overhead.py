"""Easel's own loop vs a bare diffusers pipeline call, sampler set-up cost, and checkpoint switch times.

Prints medians from one run that alternates the engine and the baseline on the same model, seed and settings,
so machine noise hits both alike: ``Engine.generate`` (own loop, A1111 noise, VAE decode, infotext) against the
diffusers pipeline of the same modules with its matching scheduler (Euler a: EulerAncestralDiscreteScheduler,
Euler: EulerDiscreteScheduler, both on A1111's uniform "linspace" timesteps). Targets: engine/bare <= 1.02,
sampler set-up (schedule + plan) < 10 ms.

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
from pipelines.sampling.k_samplers import resolve_sampler  # noqa: E402
from pipelines.sampling.loop import plan  # noqa: E402
from pipelines.sampling.rng import ImageRNG  # noqa: E402
from pipelines.sampling.samplers import SAMPLERS, SCHEDULE_TYPES  # noqa: E402
from pipelines.sampling.schedules import ModelSigmas  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_baseline import diffusers_pipeline  # noqa: E402

BASELINE_SCHEDULERS = {"Euler a": "EulerAncestralDiscreteScheduler", "Euler": "EulerDiscreteScheduler"}


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
    parser.add_argument("--sampler", default="Euler a", choices=sorted(BASELINE_SCHEDULERS))
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

    import diffusers

    scheduler_class = getattr(diffusers, BASELINE_SCHEDULERS[args.sampler])
    config = {**active.model.scheduler_config, "timestep_spacing": "linspace"}
    pipe = diffusers_pipeline(active, "txt2img", scheduler_class.from_config(config))
    pipe.set_progress_bar_config(disable=True)

    def bare() -> None:
        pipe.scheduler = scheduler_class.from_config(config)  # a fresh one per call, as the engine plans per call
        latents = ImageRNG((4, args.size // 8, args.size // 8), [seed], source="CPU").first().to(device, dtype)
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

    def set_up(sampler: str, schedule: str) -> None:
        sigmas = ModelSigmas.from_scheduler_config(active.model.scheduler_config, is_sdxl=active.model.is_sdxl)
        plan(resolve_sampler(sampler), schedule, args.steps, sigmas)

    for sampler in SAMPLERS:  # the first Beta schedule imports scipy: not a per-request cost
        set_up(sampler, "Beta")
    swaps = [timed(lambda a=a, b=b: set_up(a, b)) for _ in range(3) for a in SAMPLERS for b in SCHEDULE_TYPES]
    p95 = sorted(swaps)[int(len(swaps) * 0.95)]
    print(
        f"sampler set-up (model sigmas + schedule + plan) median {statistics.median(swaps) * 1000:.2f} ms, "
        f"p95 {p95 * 1000:.2f} ms over {len(swaps)} sampler x schedule pairs (target < 10 ms)"
    )

    manager.unload_all()
    manager.activate(first)
    cold = timed(lambda: manager.activate("b.safetensors"))  # b is not in RAM: read, convert, move
    cached = timed(lambda: manager.activate(first))  # first went to the RAM cache when b came in
    print(f"checkpoint switch: cold from disk {cold * 1000:.1f} ms, from the RAM cache {cached * 1000:.2f} ms")


if __name__ == "__main__":
    main()
