"""Test helpers for the diffusers image families: DDPM schedules, block-call counters, load spies.

The tiny pipelines themselves are built by :mod:`difffeat_tune.backbones._tiny_pipelines`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
from torch import nn


def ddpm_alpha_bar(t: int, *, scaled_linear: bool = False) -> float:
    """abar_t of the 1000-step linear (1e-4..0.02) or scaled-linear (0.00085..0.012) schedule."""
    if scaled_linear:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    else:
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    return float(torch.cumprod(1.0 - betas, dim=0)[t])


@contextmanager
def count_calls(blocks: Sequence[nn.Module]) -> Iterator[list[int]]:
    """Count the forward calls of each block (forward pre-hooks), removed afterwards."""
    counts = [0] * len(blocks)

    def make(i: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _args: object) -> None:
            counts[i] += 1

        return hook

    handles = [block.register_forward_pre_hook(make(i)) for i, block in enumerate(blocks)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def spy_from_pretrained(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[object]:
    """Record every ``cls.from_pretrained`` call (the library's loader still runs)."""
    calls: list[object] = []
    original = cls.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(klass: type, *args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls
