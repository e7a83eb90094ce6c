"""Device selection: CUDA when present, CPU otherwise; never a hard-coded device."""

from __future__ import annotations

import logging
import os

import torch

from difffeat_tune._errors import ConfigError

logger = logging.getLogger(__name__)


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


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(workers: int = 1, threads: int | None = None) -> int:
    """Set torch's intra-op threads for ``workers`` trial loops in this process; warn if the CPU is busy.

    Torch starts one thread per core in every process; several processes (or several trial loops
    in one process) each with as many threads as cores oversubscribe the machine, and small
    probes then run many times slower. So each process takes ``threads`` threads, by default the
    cores divided by ``workers`` (at least 1). When the machine's load is already above its cores
    (other processes computing), a warning says so and what to do.

    Returns:
        The number of threads set.
    """
    cores = available_cores()
    count = threads if threads is not None else max(1, cores // max(1, workers))
    torch.set_num_threads(count)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return count
    if load > cores:
        logger.warning(
            "the machine is busy (load %.1f on %d cores): torch threads of several processes compete for the "
            "cores; give each process --threads (their sum at most %d), or run one process with --workers",
            load, cores, cores)
    return count
