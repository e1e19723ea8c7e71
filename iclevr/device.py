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


def native_bf16(device) -> bool:
    """True when CUDA `device` computes in bf16 natively (compute capability 8.0+, Ampere on).

    Not torch.cuda.is_bf16_supported(): since torch 2.3 it also says True on older GPUs (V100, T4), where bf16
    is emulated and slower than fp16."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def autocast_dtype(device):
    """The autocast dtype on CUDA `device`: bf16 where it is native, fp16 otherwise."""
    import torch

    return torch.bfloat16 if native_bf16(device) else torch.float16


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA GPUs that support it natively (fp16 otherwise); a no-op on CPU and when disabled."""
    import torch

    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=autocast_dtype(device))


def cuda_speed_defaults() -> None:
    """Speed settings for CUDA training: cuDNN picks the fastest convolution for the fixed input shapes, and
    fp32 matmuls may use TF32 tensor cores (Ampere on; about 10 mantissa bits, as bf16 autocast
    already accepts)."""
    import torch

    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls; fp32 convolutions use it by default
