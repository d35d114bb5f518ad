"""Choosing the compute device and dtype, and reading free memory."""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.errors import EaselError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; anything else must exist on this machine."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise EaselError(f"unknown device '{requested}' (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EaselError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EaselError("--device mps was asked for, but this PyTorch has no MPS support")
    return device


def choose_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """CUDA and MPS run fp16 by default, the CPU fp32 (bf16 on most CPUs is far slower)."""
    if precision not in PRECISIONS:
        raise EaselError(f"unknown precision '{precision}' (use one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo; a conservative 4 GiB where that file does not exist."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def module_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes held by the parameters and buffers of some modules."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
