"""Carrying out a ``MemoryPlan`` on a checkpoint's modules, and the out-of-memory retry around a generation.

``MemoryPolicy`` is owned by the pipeline manager (it decides where the active model's weights live) and asked by
the engine to run each generation: it reads the device's free memory, decides (``memory_policy.decide``), installs
or removes the offload hooks when the level changes between requests (nothing is redone when it does not), tiles
the VAE, and when a generation runs out of memory steps down one level, empties the caches and retries once.

Mechanisms: diffusers' ``apply_group_offloading`` (block or leaf level, prefetch on a side CUDA stream),
``enable_layerwise_casting`` (fp8 storage, fp16/bf16/fp32 compute) and ``AutoencoderKL`` slicing are used as they
are; VAE tiling is Easel's own exact one (``pipelines.imaging.tiled_vae``), diffusers' blended tiling only for VAE
layouts that one does not handle. Model offload is Easel's own small hook on accelerate's hook protocol (``ModelHook``,
``add_hook_to_module``, ``send_to_device``) rather than accelerate's ``cpu_offload_with_hook`` chain: the chain
only evicts the component *before* the one that runs, so a hires fix (UNet, VAE decode, then the text encoders
again for the hires prompt, then the UNet) or an img2img encode (VAE before UNet) leaves two big components on the
device together. Here whichever component runs evicts whichever one is on the device: one at a time, in any order.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device

from pipelines.errors import EaselError
from pipelines.imaging.tiled_vae import enable_diffusers_tiling, set_tiling
from pipelines.models.devices import available_ram_bytes, module_bytes
from pipelines.runtime.memory_policy import (
    GROUP_BLOCK,
    GROUP_LEAF,
    MODEL_OFFLOAD,
    RESIDENT,
    MemoryBudget,
    MemoryPlan,
    ModelSizes,
    RequestSize,
    check_setting,
    decide,
    step_down,
)

if TYPE_CHECKING:
    from pipelines.models.manager import ActiveModel
    from pipelines.requests import GenerationRequest

log = logging.getLogger(__name__)
FP8_STORAGE = torch.float8_e4m3fn
FP8_INFOTEXT = {"FP8 weight": "Enable"}
"""Written into the infotext when the UNet computes from fp8-stored weights (its pixels differ from fp16 ones)."""


class HasWarnings(Protocol):
    warnings: list[str]


R = TypeVar("R", bound=HasWarnings)


@dataclass
class MemorySettings:
    """The command line's memory options (``--memory``, ``--medvram-sdxl``, ``--vae-tiling``, ``--fp8-weights``,
    ``--compile``); ``channels_last`` is for benchmarks that measure it off."""

    memory: str = "auto"
    vae_tiling: str = "auto"
    medvram_sdxl: bool = False
    fp8_weights: bool = False
    compile: bool = False
    channels_last: bool = True  # CUDA only: cuDNN's fp16 convolutions are fastest in NHWC

    def __post_init__(self) -> None:
        check_setting(self.memory, self.vae_tiling)


# -- out of memory -----------------------------------------------------------------------------------------------
def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the RuntimeErrors MPS and some kernels raise with the same words."""
    seen: BaseException | None = exc
    for _ in range(4):  # an error raised while handling the OOM keeps it as its cause or context
        if seen is None:
            return False
        if isinstance(seen, torch.OutOfMemoryError):
            return True
        if isinstance(seen, RuntimeError) and "out of memory" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_compile_failure(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor"))


def empty_caches(device: torch.device) -> None:
    """Drop what the failed attempt left: Python garbage first (tensors held by frames), then the allocator cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "mps":
        torch.mps.empty_cache()


# -- model offload: one component on the device at a time -------------------------------------------------------
class _ClaimHook(ModelHook):
    """accelerate's hook protocol: ``execution_device`` tells diffusers pipelines where the inputs belong."""

    def __init__(self, group: ExclusiveOffload, owner: torch.nn.Module | None = None) -> None:
        self.group = group
        self.owner = owner  # a companion claims the component it runs with (a ControlNet: the UNet)
        self.execution_device = group.device

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.group.claim(module if self.owner is None else self.owner)
        return send_to_device(args, self.group.device), send_to_device(kwargs, self.group.device)


class ExclusiveOffload:
    """Each member moves itself onto the device when its forward runs, first sending the previous one to RAM."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.holder: torch.nn.Module | None = None
        self._members: dict[int, torch.nn.Module] = {}
        self._evictors: dict[int, Any] = {}
        self._companions: dict[int, list[torch.nn.Module]] = {}  # owner id -> modules on the device with it

    def add(self, module: torch.nn.Module) -> None:
        if id(module) not in self._members:
            add_hook_to_module(module, _ClaimHook(self))
            self._members[id(module)] = module

    def add_companion(self, owner: torch.nn.Module, module: torch.nn.Module) -> None:
        """``module`` runs with ``owner`` (a ControlNet with the UNet): onto the device with it, off with it."""
        if id(module) in self._members:
            return
        add_hook_to_module(module, _ClaimHook(self, owner))
        self._members[id(module)] = module
        self._companions.setdefault(id(owner), []).append(module)
        if self.holder is owner:
            module.to(self.device)

    def discard(self, module: torch.nn.Module) -> None:
        """Take a member added for one request out again: its hook removed, its weights in RAM."""
        if id(module) not in self._members:
            return
        if self.holder is module:
            self.claim(None)
        remove_hook_from_module(module)
        del self._members[id(module)]
        for group in self._companions.values():
            group[:] = [m for m in group if m is not module]
        module.to("cpu")

    def _with_companions(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        return [module, *self._companions.get(id(module), ())]

    def add_evictor(self, module: torch.nn.Module) -> None:
        """A module that places itself (a group-offloaded UNet): it only sends the holder away before running.

        A plain torch pre-hook, not an accelerate one: diffusers' group offloading wraps the same ``forward``.
        """
        if id(module) not in self._evictors:
            self._evictors[id(module)] = module.register_forward_pre_hook(lambda *_: self.claim(None))

    def __contains__(self, module: torch.nn.Module) -> bool:
        return id(module) in self._members

    def claim(self, module: torch.nn.Module | None) -> None:
        if self.holder is module:
            return
        if self.holder is not None:
            for held in self._with_companions(self.holder):
                held.to("cpu")
            self.holder = None
        if module is not None:
            for needed in self._with_companions(module):
                needed.to(self.device)
            self.holder = module

    def remove(self) -> None:
        for module in self._members.values():
            remove_hook_from_module(module)
        for handle in self._evictors.values():
            handle.remove()
        self.claim(None)
        self._members.clear()
        self._evictors.clear()
        self._companions.clear()


# -- per-model state ---------------------------------------------------------------------------------------------
@dataclass
class Placement:
    """How one loaded model is placed now; kept with it (``ActiveModel.placement``) between requests."""

    mode: str | None = None
    offload: ExclusiveOffload | None = None
    fp8: bool = False
    fp8_kept_said: bool = False
    channels_last: bool = False
    compiled: bool = False
    compiled_shapes: set[tuple] = field(default_factory=set)
    plan: MemoryPlan | None = None


def _group_hook_names() -> tuple[str, ...]:
    try:
        from diffusers.hooks import group_offloading as go

        return (go._GROUP_OFFLOADING, go._LAYER_EXECUTION_TRACKER, go._LAZY_PREFETCH_GROUP_OFFLOADING)
    except (ImportError, AttributeError):  # names of diffusers 0.42
        return ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def _remove_diffusers_hooks(module: torch.nn.Module, names: tuple[str, ...]) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        from diffusers.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in names:
        registry.remove_hook(name, recurse=True)


def _settle_pinned_copies(module: torch.nn.Module) -> None:
    """Point every group-offloaded weight at its pinned RAM copy at once (diffusers does so on the first offload).

    Until then a weight is the original tensor, and a LoRA patched into it before the first forward would be lost
    when the pinned copy replaces it; it also frees the original copy instead of holding both.
    """
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_group_hook_names()[0]) if registry is not None else None
        group = getattr(hook, "group", None)
        for tensor, pinned in getattr(group, "cpu_param_dict", {}).items():
            tensor.data = pinned


def largest_child_bytes(unet: torch.nn.Module) -> int:
    blocks = [*getattr(unet, "down_blocks", []), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", [])]
    return max((module_bytes([b]) for b in blocks if b is not None), default=module_bytes([unet]))


def largest_leaf_bytes(unet: torch.nn.Module) -> int:
    leaves = [m for m in unet.modules() if not any(True for _ in m.children())]
    return max((module_bytes([m]) for m in leaves), default=0)


def _vae_upcasts(vae: Any, dtype: torch.dtype) -> bool:
    return vae.dtype == torch.float32 or (dtype == torch.float16 and bool(vae.config.get("force_upcast", False)))


def configure_vae(vae: Any, plan: MemoryPlan) -> None:
    """VAE tiling and slicing, on or off as planned, with the plan's tile size (in pixels).

    Tiling is Easel's exact one (``tiled_vae``: the same pixels as the whole decode) where the VAE's layout allows;
    AutoencoderKL's own blended tiling only for layouts it does not know.
    """
    exact = set_tiling(vae, plan.vae_tile if plan.vae_tiling else None)
    if plan.vae_tiling and not exact:
        log.info("VAE layout not handled by the exact tiling; using diffusers' tiling")
        enable_diffusers_tiling(vae, plan.vae_tile)
    else:
        vae.disable_tiling()
    if plan.vae_slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()


def request_size(request: GenerationRequest) -> RequestSize:
    """The sizes one request runs at: with the hires fix, its second pass (``upscale`` size) too."""
    hires = None
    if request.mode == "txt2img" and request.enable_hr:
        from pipelines.sampling.hires import request_hires_size

        hires = request_hires_size(request).upscale
    return RequestSize(request.width, request.height, request.batch_size, hires)


class MemoryPolicy:
    """Decides and applies the placement of the active model for each generation (see the module docstring)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, settings: MemorySettings | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.settings = MemorySettings() if settings is None else settings
        self.last_plan: MemoryPlan | None = None
        self.compile_error: str | None = None  # why torch.compile is off for this process, once it failed

    # -- measuring -------------------------------------------------------------------------------------------
    def budget(self, active: ActiveModel | None = None) -> MemoryBudget:
        """Bytes Easel could use on the device: free memory, the allocator's unused cache, and this model's own
        weights already there (they could be moved off). A per-process fraction (a simulated small GPU) caps it."""
        own = 0
        if active is not None:
            own = sum(
                t.numel() * t.element_size()
                for m in active.model.modules()
                for t in (*m.parameters(), *m.buffers())
                if t.device.type == self.device.type
            )
        kind = self.device.type
        if kind == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            allocated = torch.cuda.memory_allocated(self.device)
            cached = torch.cuda.memory_reserved(self.device) - allocated
            available = free + cached + own
            fraction = torch.cuda.get_per_process_memory_fraction(self.device)
            if fraction < 1.0:
                available = min(available, int(total * fraction) - allocated + own)
            return MemoryBudget(kind, max(0, available), total)
        if kind == "mps":
            limit = torch.mps.recommended_max_memory()
            return MemoryBudget(kind, max(0, limit - torch.mps.driver_allocated_memory() + own), limit)
        return MemoryBudget(kind, available_ram_bytes())

    def sizes(self, active: ActiveModel, extra: Sequence[torch.nn.Module] = ()) -> ModelSizes:
        """The active model's component sizes, and ``extra``'s: the request's modules run beside the UNet."""
        m = active.model
        sample = m.vae.config.get("sample_size", 512)
        sample = int(sample[0] if isinstance(sample, list | tuple) else sample)
        compute = 2 if self.dtype in (torch.float16, torch.bfloat16) else 4
        unet = module_bytes([m.unet])
        if self.settings.fp8_weights and not self._placement(active).fp8 and self._fp8_possible():
            unet //= 2 if compute == 2 else 4  # about to be stored in fp8
        return ModelSizes(
            unet=unet,
            text_encoders=tuple(module_bytes([te]) for te in m.text_encoders),
            vae=module_bytes([m.vae]) * (2 if m.vae.dtype != torch.float32 and _vae_upcasts(m.vae, self.dtype) else 1),
            unet_largest_block=largest_child_bytes(m.unet),
            unet_largest_leaf=largest_leaf_bytes(m.unet),
            sdxl=m.is_sdxl,
            compute_bytes=compute,
            vae_compute_bytes=4 if _vae_upcasts(m.vae, self.dtype) else compute,
            vae_sample_size=sample,
            extra=tuple(module_bytes([e]) for e in extra),
        )

    def plan(self, active: ActiveModel, size: RequestSize, extra: Sequence[torch.nn.Module] = ()) -> MemoryPlan:
        s = self.settings
        sizes = self.sizes(active, extra)
        return decide(self.budget(active), sizes, size, s.memory, s.vae_tiling, s.medvram_sdxl)

    def place_extra(self, active: ActiveModel, extra: Sequence[torch.nn.Module]) -> None:
        """Put the request's extra modules where the current level says: resident, with the UNet (model offload),
        or one component of their own (group offload, where the UNet streams)."""
        state = self._placement(active)
        for module in extra:
            if state.offload is None:
                if self.device.type != "cpu":
                    module.to(self.device)
            elif state.mode == MODEL_OFFLOAD:
                state.offload.add_companion(active.model.unet, module)
            else:
                state.offload.add(module)

    def release_extra(self, active: ActiveModel, extra: Sequence[torch.nn.Module]) -> None:
        """After an attempt: the extra modules back in RAM, without hooks (they belong to this request only)."""
        state = self._placement(active)
        for module in extra:
            if state.offload is not None:
                state.offload.discard(module)
            if self.device.type != "cpu":
                module.to("cpu")

    def status(self) -> dict[str, Any]:
        """What ``/sdapi/v1/memory`` and the UI show: the settings and the last plan, with its reason."""
        s = self.settings
        plan = self.last_plan.as_dict() if self.last_plan is not None else None
        return {
            "device": self.device.type,
            "setting": s.memory,
            "vae_tiling_setting": s.vae_tiling,
            "medvram_sdxl": s.medvram_sdxl,
            "fp8_weights": s.fp8_weights and self._fp8_possible(),
            "compile": s.compile and self.compile_error is None,
            "compile_error": self.compile_error,
            "plan": plan,
        }

    # -- placing ---------------------------------------------------------------------------------------------
    @staticmethod
    def _placement(active: ActiveModel) -> Placement:
        if active.placement is None:
            active.placement = Placement()
        return active.placement

    def place(self, active: ActiveModel) -> MemoryPlan:
        """At activation: place the model for a picture of its own native size, so it sits where it will run."""
        native = 1024 if active.model.is_sdxl else 512
        plan = self.plan(active, RequestSize(native, native))
        self.apply(active, plan)
        self.last_plan = plan
        return plan

    def release(self, active: ActiveModel) -> None:
        """The model leaves the device (a checkpoint switch): no hooks, every weight in RAM."""
        state = self._placement(active)
        self._clear(active, state)
        if self.device.type != "cpu":
            for module in active.model.modules():
                module.to("cpu")
        empty_caches(self.device)

    def apply(self, active: ActiveModel, plan: MemoryPlan, notes: list[str] | None = None) -> None:
        """Make the model's placement match ``plan``; cheap when only the VAE tiling changes."""
        notes = [] if notes is None else notes
        state = self._placement(active)
        m = active.model
        if self.settings.fp8_weights and self._fp8_possible() and not state.fp8:
            self._clear(active, state)  # layerwise casting goes under the offload hooks, never over them
            active.model.unet.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=self.dtype)
            state.fp8 = True
        elif state.fp8 and not self.settings.fp8_weights and not state.fp8_kept_said:
            # diffusers cannot undo layerwise casting, and the fp16 values are gone: only a reload brings them back
            notes.append("fp8 weights were turned off: this checkpoint's UNet stays fp8 until it is loaded again.")
            state.fp8_kept_said = True
        if self.device.type == "cuda" and self.settings.channels_last and not state.channels_last:
            for module in (m.unet, m.vae):
                module.to(memory_format=torch.channels_last)
            state.channels_last = True
        if state.mode != plan.mode:
            self._clear(active, state)
            self._install(active, state, plan.mode)
        self._compile(active, state, plan, notes)
        state.plan = plan
        self.adopt_vae(active)

    def adopt_vae(self, active: ActiveModel) -> None:
        """Place and tile ``active.model.vae`` as the current plan says: also a VAE a request swapped in."""
        state = self._placement(active)
        plan, vae = state.plan, active.model.vae
        if plan is None:
            return
        configure_vae(vae, plan)
        if state.offload is not None:
            if vae not in state.offload:
                vae.to("cpu")
                state.offload.add(vae)
        elif self.device.type != "cpu":
            vae.to(self.device)

    def _install(self, active: ActiveModel, state: Placement, mode: str) -> None:
        m = active.model
        if mode == RESIDENT:
            if self.device.type != "cpu":
                for module in m.modules():
                    module.to(self.device)
        else:
            offload = ExclusiveOffload(self.device)
            for module in m.modules():
                module.to("cpu")
            for module in (*m.text_encoders, m.vae):
                offload.add(module)
            if mode == MODEL_OFFLOAD:
                offload.add(m.unet)
            else:
                self._group_offload(m.unet, mode)
                offload.add_evictor(m.unet)
            state.offload = offload
        state.mode = mode
        log.info("memory: %s for %s", mode, active.info.name)

    def _group_offload(self, unet: torch.nn.Module, mode: str) -> None:
        from diffusers.hooks import apply_group_offloading

        stream = self.device.type == "cuda"
        apply_group_offloading(
            unet,
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level" if mode == GROUP_BLOCK else "leaf_level",
            num_blocks_per_group=1 if mode == GROUP_BLOCK else None,
            use_stream=stream,
            record_stream=stream,
        )
        if stream:
            _settle_pinned_copies(unet)

    def _clear(self, active: ActiveModel, state: Placement) -> None:
        """Remove whatever hooks the current level installed (the weights stay where they are)."""
        if state.compiled and state.mode is not None:
            self._uncompile(active, state)
        if state.offload is not None:
            state.offload.remove()
            state.offload = None
        if state.mode in (GROUP_BLOCK, GROUP_LEAF):
            _remove_diffusers_hooks(active.model.unet, _group_hook_names())
        state.mode = None

    def _fp8_possible(self) -> bool:
        return self.device.type != "mps"  # MPS has no float8 tensors

    # -- torch.compile ---------------------------------------------------------------------------------------
    def _compile(self, active: ActiveModel, state: Placement, plan: MemoryPlan, notes: list[str]) -> None:
        wanted = self.settings.compile and self.compile_error is None and plan.mode == RESIDENT
        if wanted and not state.compiled:
            active.model.unet.compile()
            state.compiled = True
        elif not wanted and state.compiled:
            self._uncompile(active, state)

    @staticmethod
    def _uncompile(active: ActiveModel, state: Placement) -> None:
        active.model.unet._compiled_call_impl = None  # what nn.Module.compile set; eager calls again
        state.compiled = False
        state.compiled_shapes.clear()

    def _announce_compile(self, active: ActiveModel, size: RequestSize, notes: list[str]) -> None:
        state = self._placement(active)
        if not state.compiled:
            return
        key = (size.passes, size.batch)
        if key not in state.compiled_shapes:
            state.compiled_shapes.add(key)
            message = (
                f"torch.compile: this is the first {size.text()} image since start-up, so the UNet was compiled "
                "for it (slow first steps); later requests of this size reuse the compiled UNet."
            )
            log.info(message)
            notes.append(message)

    # -- one generation --------------------------------------------------------------------------------------
    def infotext(self, active: ActiveModel) -> dict[str, str]:
        return dict(FP8_INFOTEXT) if self._placement(active).fp8 else {}

    def run(
        self,
        request: GenerationRequest,
        active: ActiveModel,
        attempt: Callable[[MemoryPlan], R],
        extra: Sequence[torch.nn.Module] = (),
    ) -> R:
        """``attempt(plan)`` under the plan for this request; on out of memory one level lower, once.

        ``extra``: modules the request runs beside the UNet (the extensions' ``request_modules``: ControlNets),
        counted in the decision and placed with the UNet for each attempt, back in RAM after it.

        The model is left clean after every attempt (components offloaded back to RAM, caches emptied after a
        failure), so whatever happened the next request starts from a known state. What happened is added to the
        result's warnings.
        """
        size = request_size(request)
        plan = self.plan(active, size, extra)
        notes: list[str] = []
        for retry in (False, True):
            self.apply(active, plan, notes)
            self.place_extra(active, extra)
            self.last_plan = plan
            self._announce_compile(active, size, notes)
            failure: str | None = None
            try:
                result = attempt(plan)
            except Exception as exc:
                if is_out_of_memory(exc):
                    failure = "oom"
                elif self._placement(active).compiled and _is_compile_failure(exc):
                    failure = f"compile: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                else:
                    raise
            finally:
                state = self._placement(active)
                if state.offload is not None:
                    state.offload.claim(None)
                self.release_extra(active, extra)
            # the exception and the frames holding the failed attempt's tensors are gone here
            if failure is None:
                result.warnings.extend(notes)
                return result
            empty_caches(self.device)
            if failure.startswith("compile"):
                self.compile_error = failure.removeprefix("compile: ")
                log.warning("torch.compile failed, running uncompiled from now on: %s", self.compile_error)
                notes.append(f"torch.compile failed here ({self.compile_error}); the image was made uncompiled.")
                if retry:
                    break
                continue
            lower = step_down(plan, self.settings.vae_tiling)
            if retry or lower is None:
                raise EaselError(
                    f"out of {self.device.type} memory at {size.text()} even with {plan.describe()}: "
                    "try a smaller size or batch (the server is fine; memory was freed)"
                )
            log.warning("out of memory with %s; retrying with %s", plan.describe(), lower.describe())
            notes.append(
                f"Ran out of {self.device.type} memory with {plan.describe()}; retried once with {lower.describe()}, "
                "which worked. Later requests are decided afresh."
            )
            plan = lower
        raise EaselError("torch.compile failed twice; start without --compile")
