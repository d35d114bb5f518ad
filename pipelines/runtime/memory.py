"""Memory numbers for A1111's ``/sdapi/v1/memory``: system RAM, and the CUDA allocator's statistics when in use."""

from __future__ import annotations

import os
from typing import Any

import torch

from pipelines.models.devices import available_ram_bytes

# A1111's names -> torch.cuda.memory_stats() keys, each reported as current and peak bytes
_CUDA_POOLS = {
    "active": "active_bytes.all",
    "allocated": "allocated_bytes.all",
    "reserved": "reserved_bytes.all",
    "inactive": "inactive_split_bytes.all",
}


def total_ram_bytes() -> int:
    """Physical RAM; the available amount where the OS does not say (never fails)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return available_ram_bytes()


def ram_stats() -> dict[str, int]:
    total, free = total_ram_bytes(), available_ram_bytes()
    return {"free": free, "used": max(0, total - free), "total": total}


def cuda_stats(device: torch.device) -> dict[str, Any]:
    """The device's free/used/total and allocator pools, or ``{"error": ...}`` when it is not a CUDA device."""
    if device.type != "cuda":
        return {"error": "no CUDA device in use"}
    free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    pools = {
        name: {"current": stats.get(f"{key}.current", 0), "peak": stats.get(f"{key}.peak", 0)}
        for name, key in _CUDA_POOLS.items()
    }
    return {
        "system": {"free": free, "used": total - free, "total": total},
        **pools,
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }


def memory_stats(device: torch.device) -> dict[str, Any]:
    """``{"ram": ..., "cuda": ...}`` in A1111's shape, in bytes."""
    return {"ram": ram_stats(), "cuda": cuda_stats(device)}
