"""Easel's own denoising loop vs diffusers' scheduler loop: the same UNet, the same number of UNet calls.

Both sides run N Euler steps with classifier-free guidance (one batched UNet call a step): Easel's
``pipelines.sampling.loop.sample`` against the loop body of a diffusers pipeline (``scale_model_input``, UNet, CFG,
``EulerDiscreteScheduler.step``). Runs alternate, so machine noise hits both alike; prints medians and the ratio
easel / diffusers (target <= 1.02). The tiny UNet at a small latent is the worst case for overhead. A last line
times both loops around a free stand-in UNet: the loops' own work per step, which machine noise cannot hide.

    python benchmarks/loop_overhead.py                          # tiny SD1 UNet, 64x64 and 256x256 images, CPU
    python benchmarks/loop_overhead.py --device cuda --dtype fp16 --sizes 512 1024 --family sdxl
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.models.tiny_models import SD_BETAS, build_tiny_components  # noqa: E402
from pipelines.sampling.denoiser import Conditioning, UNetDenoiser  # noqa: E402
from pipelines.sampling.k_samplers import GeneratorNoise  # noqa: E402
from pipelines.sampling.loop import sample  # noqa: E402
from pipelines.sampling.schedules import ModelSigmas  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", help="tiny model family (sd1, sdxl, ...)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: robust when the CPU is shared)")
    parser.add_argument("--no-stub", dest="stub", action="store_false", help="skip the free-UNet loop timing")
    args = parser.parse_args()

    from diffusers import EulerDiscreteScheduler

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    unet = build_tiny_components(args.family, seed=1)["unet"].to(device, dtype)
    sdxl = args.family.startswith("sdxl")
    cross = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(args.batch, 77, cross, generator=g).to(device)
    uncond = torch.randn(args.batch, 77, cross, generator=g).to(device)
    added_c = added_u = None
    if sdxl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        time_ids = torch.tensor([[512.0, 512, 0, 0, 512, 512]] * args.batch, device=device)
        added_c = {"text_embeds": torch.randn(args.batch, pooled, generator=g).to(device), "time_ids": time_ids}
        added_u = {"text_embeds": torch.randn(args.batch, pooled, generator=g).to(device), "time_ids": time_ids}
    denoiser = UNetDenoiser(unet, ModelSigmas.from_scheduler_config(SD_BETAS, is_sdxl=sdxl))
    conditioning = Conditioning(cond, uncond, added_c, added_u)
    hidden = torch.cat([uncond, cond]).to(dtype)  # diffusers' order: [negative, positive], built once
    added = None
    if sdxl:
        added = {k: torch.cat([added_u[k], added_c[k]]).to(dtype) for k in added_c}  # type: ignore[index]
    cfg = 7.0

    print(
        f"{args.family} tiny UNet, {args.steps} Euler steps, CFG, batch {args.batch}, {device} {args.dtype}", flush=True
    )
    for size in args.sizes:
        shape = (unet.config.in_channels, size // 8, size // 8)

        def easel(shape: tuple[int, ...] = shape) -> torch.Tensor:
            gens = [torch.Generator().manual_seed(1 + i) for i in range(args.batch)]
            noise = torch.stack([torch.randn(shape, generator=gen) for gen in gens]).to(device)
            source = GeneratorNoise(gens, shape, device)
            return sample(denoiser, "Euler", "Uniform", args.steps, noise, conditioning, cfg, source)

        def baseline(shape: tuple[int, ...] = shape) -> torch.Tensor:
            scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace")
            scheduler.set_timesteps(args.steps, device=device)
            gens = [torch.Generator().manual_seed(1 + i) for i in range(args.batch)]
            x = torch.stack([torch.randn(shape, generator=gen) for gen in gens]).to(device) * scheduler.init_noise_sigma
            with torch.no_grad():
                for t in scheduler.timesteps:
                    model_input = scheduler.scale_model_input(torch.cat([x] * 2), t).to(dtype)
                    kwargs = {"added_cond_kwargs": added} if added is not None else {}
                    out = unet(model_input, t, encoder_hidden_states=hidden, return_dict=False, **kwargs)[0]
                    out_uncond, out_cond = out.chunk(2)
                    guided = out_uncond + cfg * (out_cond - out_uncond)
                    x = scheduler.step(guided, t, x, return_dict=False)[0]
            return x

        for fn in (easel, baseline):  # warm-up (allocator, kernels, lazy imports)
            timed(fn, device)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(timed(easel, device))
            theirs.append(timed(baseline, device))
        mine, base = statistics.median(ours), statistics.median(theirs)
        print(
            f"  {size}x{size}: easel {mine * 1000:8.1f} ms   diffusers {base * 1000:8.1f} ms   "
            f"ratio {mine / base:.3f}   per step {(mine - base) / args.steps * 1000:+.2f} ms",
            flush=True,
        )
    if args.stub:
        stub_overhead(args, device)


class _StubUNet(torch.nn.Module):
    """A UNet that costs nothing: what is left is the loops' own work per step."""

    dtype = torch.float32

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor]:
        return (sample[:, :4] * 0.1,)


def stub_overhead(args: argparse.Namespace, device: torch.device) -> None:
    """Per-step cost of each loop with a free model: the number the ratio above hides in UNet time."""
    from diffusers import EulerDiscreteScheduler

    stub = _StubUNet()
    denoiser = UNetDenoiser(stub, ModelSigmas.from_scheduler_config(SD_BETAS))  # type: ignore[arg-type]
    cond = torch.randn(args.batch, 77, 64, device=device)
    conditioning, hidden = Conditioning(cond, cond.clone()), torch.cat([cond, cond])
    shape = (4, 8, 8)

    def easel() -> torch.Tensor:
        gens = [torch.Generator().manual_seed(1 + i) for i in range(args.batch)]
        noise = torch.stack([torch.randn(shape, generator=gen) for gen in gens]).to(device)
        return sample(denoiser, "Euler", "Uniform", args.steps, noise, conditioning, 7.0, GeneratorNoise(gens, shape))

    def baseline() -> torch.Tensor:
        scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace")
        scheduler.set_timesteps(args.steps, device=device)
        x = torch.randn((args.batch, *shape), generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            for t in scheduler.timesteps:
                out = stub(scheduler.scale_model_input(torch.cat([x] * 2), t), t, encoder_hidden_states=hidden)[0]
                out_uncond, out_cond = out.chunk(2)
                x = scheduler.step(out_uncond + 7.0 * (out_cond - out_uncond), t, x, return_dict=False)[0]
        return x

    for fn in (easel, baseline):
        timed(fn, device)
    ours = [timed(easel, device) for _ in range(30)]
    theirs = [timed(baseline, device) for _ in range(30)]
    per_step = [statistics.median(v) / args.steps * 1000 for v in (ours, theirs)]
    print(f"  free UNet: easel {per_step[0]:.3f} ms/step, diffusers {per_step[1]:.3f} ms/step (loop work alone)")


if __name__ == "__main__":
    main()
