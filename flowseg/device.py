"""Resolve a device name once (``"auto"`` -> CUDA when available, else CPU) and the numeric
precision of the network on it (bf16 autocast where the hardware runs bf16 natively)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "autocast", "cpu_has_bf16", "preferred_memory_format", "resolve_device",
           "resolve_precision"]

#: Values of a ``precision`` option: ``"auto"`` is bf16 autocast on CUDA and on CPUs with native
#: bf16 instructions (AVX-512 BF16 or AMX), float32 elsewhere.
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``None``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device into a torch.device.

    Raises
    ------
    ValueError
        An unknown name, or CUDA asked for on a machine without it.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    else:
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine "
                         "(use 'cpu' or 'auto')")
    return resolved


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX-512 BF16 or AMX-BF16).

    Asks oneDNN (through torch) first, then the Linux CPU flags; False when neither answers.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16`` or ``torch.float32``.

    ``"auto"``: bf16 on CUDA and on CPUs where :func:`cpu_has_bf16`, float32 elsewhere;
    ``"bf16"``: bf16 anywhere (emulated, and slow, on CPUs without it); ``"fp32"``: float32.

    Raises
    ------
    ValueError
        ``precision`` not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16" or device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None = None):
    """Autocast to ``dtype`` on ``device`` (a no-op context for float32).

    ``dtype=None`` keeps the library's inference behaviour: bf16 on CUDA, float32 on CPU.
    """
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float32 or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def preferred_memory_format(device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """Channels-last for bf16 on CPU (oneDNN's fast path: with bf16 autocast, a training step of the
    default U-Net ran 3.5x faster than float32 in ``benchmarks/model.py --precision fp32,bf16``),
    the default layout otherwise."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return torch.channels_last
    return torch.contiguous_format
