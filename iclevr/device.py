"""Device choice and autocast, shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib

from iclevr.errors import UserError


def pick_device(name: str = "auto"):
    """'auto' -> cuda if available, else mps, else cpu; validate explicit names with a clear error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f'unknown device "{name}"; use auto, cpu, cuda, cuda:N or mps') from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f'device "{name}" requested but no CUDA GPU is available; use --device cpu')
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f'device "{name}" does not exist ({torch.cuda.device_count()} GPU(s) visible)')
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError('device "mps" requested but it is not available; use --device cpu')
    return dev


def has_gpu() -> bool:
    """True when a CUDA GPU is visible."""
    import torch

    return torch.cuda.is_available()


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA GPUs that support it (fp16 otherwise); a no-op on CPU and when disabled."""
    import torch

    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
