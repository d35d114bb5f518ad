# ruff: noqa: F811  (the fixtures imported from tests.test_controlnet are parameters here)
"""ControlNets under the memory policy, on the CPU with a pretend GPU budget: their size is counted in the decision
(a budget that fits the checkpoint alone but not with a ControlNet gives a lower level), and under model offload
they come onto the device with the UNet and leave with it, without hooks once the request is done."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipelines.generate import Engine
from pipelines.models.devices import module_bytes
from pipelines.runtime.memory_policy import MB, MODEL_OFFLOAD, RESIDENT, MemoryBudget, MemoryPlan, RequestSize
from pipelines.runtime.placement import ExclusiveOffload
from tests.test_controlnet import builtins, cn_dir, engine, request, unit  # noqa: F401 (fixtures)


def _controlnets(engine: Engine, *units: dict[str, Any]) -> list[torch.nn.Module]:
    active = engine.manager.active
    return engine.hooks.request_modules(request(*units), engine._model_view(active))


def test_the_extension_declares_each_model_once(engine: Engine) -> None:
    assert _controlnets(engine) == []
    two = _controlnets(engine, unit(), unit(weight=0.5), unit(model="tiny-sd1-other"))
    assert len(two) == 2 and two[0] is not two[1]  # three units, two files: one copy each
    assert all(type(m).__name__ == "ControlNetModel" for m in two)


def _budget_between(engine: Engine, extra: list[torch.nn.Module], size: RequestSize) -> MemoryBudget:
    """A pretend GPU whose usable memory is halfway between the resident peak without and with ``extra``."""
    policy, active = engine.manager.memory, engine.manager.active
    huge = MemoryBudget("cuda", 1 << 40)
    policy_budget = policy.budget
    try:
        policy.budget = lambda _active=None: huge  # type: ignore[method-assign]
        alone, with_extra = policy.plan(active, size), policy.plan(active, size, extra)
    finally:
        policy.budget = policy_budget  # type: ignore[method-assign]
    assert alone.mode == with_extra.mode == RESIDENT
    assert with_extra.estimated_peak - alone.estimated_peak == sum(module_bytes([m]) for m in extra)
    usable = (alone.estimated_peak + with_extra.estimated_peak) // 2
    return MemoryBudget("cuda", int((usable + 256 * MB) / 0.92) + 1)


def test_the_plan_counts_the_controlnet(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = _controlnets(engine, unit())
    size = RequestSize(64, 64)
    budget = _budget_between(engine, extra, size)
    policy, active = engine.manager.memory, engine.manager.active
    monkeypatch.setattr(policy, "budget", lambda _active=None: budget)
    assert policy.plan(active, size).mode == RESIDENT
    lower = policy.plan(active, size, extra)
    assert lower.mode == MODEL_OFFLOAD and "extension modules (ControlNet)" in lower.reason
    # through the engine: the same request with and without a unit gets the two plans
    engine.generate(request())
    assert policy.last_plan is not None and policy.last_plan.mode == RESIDENT
    engine.generate(request(unit()))
    assert policy.last_plan.mode == MODEL_OFFLOAD and not engine.hooks.failed


def _hooked(module: torch.nn.Module) -> bool:
    return hasattr(module, "_hf_hook")


def test_model_offload_places_the_controlnet_with_the_unet(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = engine.manager.memory
    resident = np.asarray(engine.generate(request(unit())).images[0])
    controlnet = _controlnets(engine, unit())[0]
    seen: list[tuple[str, bool]] = []
    original = ExclusiveOffload.claim

    def claim(self: ExclusiveOffload, module: torch.nn.Module | None) -> None:
        original(self, module)
        if module is engine.manager.active.model.unet:
            seen.append(("unet", controlnet in self._with_companions(module)))

    monkeypatch.setattr(ExclusiveOffload, "claim", claim)
    monkeypatch.setattr(policy, "plan", lambda _a, _s, _e=(): MemoryPlan(MODEL_OFFLOAD, False, False, 512, "test"))
    offloaded = np.asarray(engine.generate(request(unit())).images[0])
    assert np.array_equal(offloaded, resident)  # the same picture, one component (and its ControlNet) at a time
    assert seen and all(companion for _, companion in seen)  # the ControlNet came onto the device with the UNet
    offload = engine.manager.active.placement.offload
    assert offload is not None and offload.holder is None  # everything back in RAM
    assert not _hooked(controlnet) and controlnet not in offload  # no hook left on a module of a past request
    assert _hooked(engine.manager.active.model.unet)  # the checkpoint's own hooks stay between requests
    assert not engine.hooks.failed


def test_companions_follow_their_owner() -> None:
    group = ExclusiveOffload(torch.device("cpu"))
    unet, controlnet, vae = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    group.add(unet)
    group.add(vae)
    group.add_companion(unet, controlnet)
    controlnet(torch.zeros(1, 2))  # the ControlNet runs first in a step: it brings the UNet along
    assert group.holder is unet
    vae(torch.zeros(1, 2))
    assert group.holder is vae
    group.discard(controlnet)
    assert controlnet not in group and not _hooked(controlnet) and group._with_companions(unet) == [unet]
