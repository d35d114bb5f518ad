"""The step-time cost of ControlNet: Easel's loop with one (and two) ControlNet units vs none, same run.

Each unit adds one ControlNet forward per UNet call (over the CFG batch; over its conditional half alone in
"ControlNet is more important"), through the built-in extension's model-call wrapper. Runs alternate so machine
noise hits all alike; prints medians per step and the ratio to no ControlNet.

    python benchmarks/controlnet_cost.py                              # tiny SD1, 64x64 and 256x256, CPU
    python benchmarks/controlnet_cost.py --device cuda --dtype fp16 --sizes 512 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.extensions.loader import BUILTIN_DIR, MODULE_PREFIX, load_extensions  # noqa: E402
from pipelines.extensions.state import ExtensionState  # noqa: E402
from pipelines.models.tiny_models import SD_BETAS, build_tiny_components, build_tiny_controlnet  # noqa: E402
from pipelines.sampling.denoiser import Conditioning, SamplingHooks, UNetDenoiser  # noqa: E402
from pipelines.sampling.k_samplers import GeneratorNoise  # noqa: E402
from pipelines.sampling.loop import sample  # noqa: E402
from pipelines.sampling.schedules import ModelSigmas  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    extensions = load_extensions(None, BUILTIN_DIR, ExtensionState(Path("/nonexistent/state.json")))
    control = sys.modules[MODULE_PREFIX + "controlnet.control"]
    units = sys.modules[MODULE_PREFIX + "controlnet.units"]
    unet = build_tiny_components("sd1", seed=1)["unet"].to(device, dtype)
    models = [build_tiny_controlnet(unet, seed=s).to(device, dtype) for s in (3, 4)]
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(device)
    uncond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(device)
    denoiser = UNetDenoiser(unet, ModelSigmas.from_scheduler_config(SD_BETAS))
    conditioning = Conditioning(cond, uncond)

    def hooks(count: int, size: int) -> tuple[SamplingHooks, object]:
        values = {f"unit_{i}": {"model": "m"} for i in range(count)}
        request = SimpleNamespace(extensions={"controlnet": values}, mode="txt2img", enable_hr=False)
        runtime = control.ControlNetRuntime(lambda: [], lambda: False, 3)
        picture = Image.new("RGB", (size, size), (200, 60, 30))
        prepared = [
            control.Prepared(units.parse_unit({"model": "m", "image": picture}, i), models[i], picture)
            for i in range(count)
        ]
        runtime._prepared[id(values)] = (values, prepared)
        wrapper = lambda call, inputs: runtime.model_call(request, call, inputs)  # noqa: E731
        return SamplingHooks(model_call=[wrapper] if count else []), runtime

    print(f"tiny SD1 UNet + tiny ControlNets, {args.steps} Euler steps, CFG, {device} {args.dtype}", flush=True)
    for size in args.sizes:
        shape = (4, size // 8, size // 8)
        runs = {count: hooks(count, size) for count in (0, 1, 2)}

        def once(count: int, shape: tuple[int, ...] = shape, runs: dict = runs) -> float:
            gens = [torch.Generator().manual_seed(1)]
            noise = torch.stack([torch.randn(shape, generator=gens[0])]).to(device)
            source = GeneratorNoise(gens, shape, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                sample(denoiser, "Euler", "Uniform", args.steps, noise, conditioning, 7.0, source, runs[count][0])
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        for count in runs:
            once(count)  # warm-up
        times: dict[int, list[float]] = {count: [] for count in runs}
        for _ in range(args.repeats):
            for count in runs:
                times[count].append(once(count))
        base = statistics.median(times[0])
        line = "  ".join(
            f"{count} unit{'s' if count != 1 else ''} {statistics.median(t) / args.steps * 1000:7.2f} ms/step "
            f"(x{statistics.median(t) / base:.2f})"
            for count, t in times.items()
        )
        print(f"  {size}x{size}: {line}", flush=True)
    extensions.unload()


if __name__ == "__main__":
    main()
