"""Resolve a device name once: ``"auto"`` -> CUDA when available, else CPU."""

from __future__ import annotations

import torch

__all__ = ["autocast", "resolve_device"]


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


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU runs stay float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
