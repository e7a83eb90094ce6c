"""Device selection: CUDA when present, CPU otherwise; never a hard-coded device."""

from __future__ import annotations

import torch

from difffeat_tune._errors import ConfigError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to use.

    Args:
        device: ``None`` or ``"auto"`` picks CUDA when available, else CPU. Any other value is
            passed to :class:`torch.device` and checked for availability.

    Raises:
        ConfigError: the device string is malformed or names CUDA on a machine without it.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}", "use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available", "use --device cpu or auto")
    return resolved


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for inference on ``device``: bf16 on CUDA, none on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None
