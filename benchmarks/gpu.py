"""One device run: Easel vs bare diffusers speed and peak VRAM, and the memory policy under small budgets.

Builds full-size random-weight SD1.5 and SDXL checkpoints by code (the shipped configs, saved in the original
single-file layout by ``save_single_file``), loads them through Easel's real loader, and prints from one run:

- SD1.5 512x512 and SDXL 1024x1024, 20 steps, batch 1, CFG 7: it/s and peak VRAM for a bare diffusers pipeline
  built around the same modules, for ``Engine.generate`` with everything resident (channels_last off, then on),
  and with ``--compile`` (compile warm-up timed apart);
- with a simulated 8 GB and 6 GB GPU (``torch.cuda.set_per_process_memory_fraction``) under ``--memory auto``: the
  mode chosen, peak VRAM, it/s and whether it completed; SDXL hires fix to 2048x2048 under 8 GB;
- the policy's estimated peak next to the measured one, to calibrate ``memory_policy``'s constants.

    python benchmarks/gpu.py                      # on a CUDA GPU: about 5-7 minutes on an H200 (estimated)
    python benchmarks/gpu.py --compile sd1,sdxl   # SDXL compiled too (2-3 minutes more)
    python benchmarks/gpu.py --device cpu --tiny  # a dry run of every row with tiny models (a minute or two)

Targets (issue 13): SDXL 1024x1024 completes under 8 GB with no flag; Easel's it/s >= 0.98x bare diffusers
resident, and >= 1.2x with --compile. Random weights make noise pictures; speed and memory do not care.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers_baseline import diffusers_pipeline  # noqa: E402

GiB = 1 << 30
PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic clouds"


@dataclass
class Row:
    family: str
    case: str
    mode: str = ""
    seconds: float = 0.0
    steps: int = 0
    peak_gib: float | None = None
    estimated_gib: float | None = None
    completed: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def its(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


# -- checkpoints -----------------------------------------------------------------------------------------------
def _config(family: str, part: str) -> dict:
    data = json.loads((ROOT / "pipelines/models/configs" / family / part / "config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build_checkpoint(family: str, tiny: bool, path: Path, device: torch.device) -> None:
    """Random weights in the real layout, initialised on the device (fast), saved in fp16 as an original file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.models.tiny_models import build_tiny_components, save_single_file

    if tiny:
        save_single_file(family, build_tiny_components(family, seed=0), path)
        return
    torch.manual_seed(0)
    with torch.device(device):
        components: dict[str, Any] = {
            "unet": UNet2DConditionModel.from_config(_config(family, "unet")),
            "vae": AutoencoderKL.from_config(_config(family, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**_config(family, "text_encoder"))),
        }
        if family == "sdxl":
            components["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**_config(family, "text_encoder_2"))
            )
    half = torch.float16 if device.type == "cuda" else torch.float32
    for name, module in components.items():
        components[name] = module.to("cpu", half).eval()
    save_single_file(family, components, path)
    del components
    gc.collect()


# -- measuring -------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[float, float | None]:
    """Seconds and peak allocated GiB of ``fn()``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None
    return seconds, peak


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from pipelines.generate import Engine, EngineSettings
        from pipelines.models.checkpoints import HashCache
        from pipelines.models.manager import PipelineManager
        from pipelines.runtime.placement import MemoryPolicy, MemorySettings

        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.steps = args.steps
        self.rows: list[Row] = []
        self.policy = MemoryPolicy(self.device, self.dtype, MemorySettings(memory="high", channels_last=False))
        manager = PipelineManager(
            work / "ckpt", self.device, self.dtype, HashCache(work / "hashes.json"), 1, memory=self.policy
        )
        self.engine = Engine(manager, work / "out", EngineSettings(preview_every=0, save_outputs=False))
        self.total = torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else 0

    def record(self, row: Row) -> Row:
        self.rows.append(row)
        peak = f"{row.peak_gib:6.2f} GiB" if row.peak_gib is not None else "     -    "
        est = f" (estimated {row.estimated_gib:5.2f})" if row.estimated_gib is not None else ""
        status = "ok" if row.completed else "FAILED"
        print(
            f"{row.family:5} {row.case:34} {row.mode:34} {row.its:7.2f} it/s  peak {peak}{est}  {status} {row.note}",
            flush=True,
        )
        return row

    def request(self, family: str, **overrides: Any) -> Any:
        from pipelines.requests import GenerationRequest

        size = 64 if self.args.tiny else (1024 if family == "sdxl" else 512)
        values = {"prompt": PROMPT, "steps": self.steps, "width": size, "height": size, "sampler": "Euler"}
        return replace(GenerationRequest(**values, cfg_scale=7.0, seed=1, save=False), **overrides)

    def easel(self, family: str, case: str, request: Any) -> Row:
        result: list[Any] = []
        try:
            seconds, peak = timed(self.device, lambda: result.append(self.engine.generate(request)))
        except Exception as exc:  # a row that fails is reported, the run goes on
            traceback.print_exc()
            return self.record(Row(family, case, completed=False, note=f"{type(exc).__name__}: {exc}"[:200]))
        plan = self.policy.last_plan
        steps = request.steps + (request.hr_second_pass_steps or request.steps if request.enable_hr else 0)
        est = plan.estimated_peak / GiB if plan is not None and plan.estimated_peak else None
        note = "; ".join(w[:120] for w in result[0].warnings)
        mode = plan.describe() if plan is not None else ""
        return self.record(Row(family, case, mode, seconds, steps, peak, est, True, note))

    def run_family(self, family: str, work: Path) -> None:
        name = f"random-{family}.safetensors"
        path = work / "ckpt" / name
        start = time.perf_counter()
        build_checkpoint(family, self.args.tiny, path, self.device)
        built = time.perf_counter() - start
        self.engine.manager.refresh()
        start = time.perf_counter()
        active = self.engine.manager.activate(name)
        loaded = time.perf_counter() - start
        gib = path.stat().st_size / GiB
        print(f"{family}: built and saved in {built:.0f} s ({gib:.2f} GiB), loaded in {loaded:.0f} s")
        request = self.request(family)
        self.engine.generate(replace(request, steps=2))  # warm-up: kernels, cuDNN autotuning, allocator
        pipe = diffusers_pipeline(active)
        pipe.set_progress_bar_config(disable=True)
        size = {"height": request.height, "width": request.width}
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=2, guidance_scale=7.0, **size)
            seconds, peak = timed(
                self.device, lambda: pipe(PROMPT, num_inference_steps=self.steps, guidance_scale=7.0, **size)
            )
        bare = self.record(
            Row(family, f"diffusers {request.width}x{request.height}", "resident", seconds, self.steps, peak)
        )
        pipe = None  # only the engine holds the modules from here on
        easel = self.easel(family, f"easel {request.width}x{request.height}", request)
        self.policy.settings.channels_last = True
        self.engine.generate(replace(request, steps=2))
        easel_cl = self.easel(family, "easel + channels_last", request)
        for row in (easel, easel_cl):
            row.extra["vs_diffusers"] = row.its / bare.its if bare.its else None
            print(f"      {row.case}: {row.extra['vs_diffusers']:.3f}x bare diffusers (target >= 0.98)")
        if family in self.args.compile:
            self.policy.settings.compile = True
            warm = self.easel(family, "easel --compile (warm-up)", request)
            fast = self.easel(family, "easel --compile", request)
            fast.extra["vs_diffusers"] = fast.its / bare.its if bare.its else None
            fast.extra["warm_up_s"] = warm.seconds
            print(f"      --compile: {fast.extra['vs_diffusers']:.3f}x bare diffusers (target >= 1.2)")
            self.policy.settings.compile = False
        self.budgets(family, request, active)
        self.engine.manager.unload_all()
        del active
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def budgets(self, family: str, request: Any, active: Any) -> None:
        """--memory auto under simulated small GPUs (tiny: budgets scaled to the tiny model's own estimate)."""
        self.policy.settings.memory = "auto"
        cases: list[tuple[str, float, Any]] = [("8 GB", 8, request), ("6 GB", 6, request)]
        if family == "sdxl":
            hires = replace(request, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=max(1, self.steps // 2))
            hires = replace(hires, denoising_strength=0.5, hr_upscaler="Latent")
            cases.append(("8 GB, hires fix to 2x", 8, hires))
        for label, gb, req in cases:
            if self.device.type == "cuda" and not self.args.tiny:
                gc.collect()
                torch.cuda.empty_cache()
                # a real "8 GB" card has 8 GiB, of which the CUDA context takes ~0.5 GiB outside the allocator
                limit = gb * GiB - 512 * (1 << 20)
                torch.cuda.set_per_process_memory_fraction(min(1.0, limit / self.total), self.device)
                try:
                    row = self.easel(family, f"budget {label}", req)
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            else:  # a dry run: pretend to be a GPU whose free memory is a share of the estimated resident peak
                from pipelines.runtime.memory_policy import MemoryBudget, RequestSize

                sizes = self.policy.sizes(active)
                need = sizes.total + 2 * sizes.unet  # a generous resident peak for the tiny model
                share = {8: 0.9, 6: 0.35}[int(gb)]
                fake = MemoryBudget("cuda", int(need * share) + (1 << 28))
                original = self.policy.budget
                self.policy.budget = lambda _active=None, fake=fake: fake  # type: ignore[method-assign]
                try:
                    row = self.easel(family, f"budget {label} (simulated)", req)
                finally:
                    self.policy.budget = original  # type: ignore[method-assign]
                del RequestSize
            row.extra["budget_gb"] = gb
        self.policy.settings.memory = "high"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a dry run, with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models at 64x64 (a dry run of every row)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (20; 2 with --tiny)")
    parser.add_argument("--families", default="sd1,sdxl", help="comma-separated: sd1, sdxl")
    parser.add_argument(
        "--compile",
        default="sd1",
        help="families to measure with --compile ('' for none; sdxl adds 2-3 minutes of compilation)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoints (a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.tiny else 20)
    args.compile = [f for f in args.compile.split(",") if f]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --device cpu --tiny for a dry run")
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    work = args.work or Path(tempfile.mkdtemp(prefix="easel-gpu-bench-"))
    (work / "ckpt").mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work)
    start = time.perf_counter()
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        print(f"{torch.cuda.get_device_name(bench.device)}, torch {torch.__version__}, {bench.total / GiB:.0f} GiB")
    for family in args.families.split(","):
        bench.run_family(family, work)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        rows = [row.__dict__ | {"its": row.its} for row in bench.rows]
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
