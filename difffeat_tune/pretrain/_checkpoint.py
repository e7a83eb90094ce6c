"""Resumable checkpoints of the pretraining stages.

A long CPU training (hours) must survive the end of the process that runs it: every few minutes
each trainer writes its whole state (model, optimiser, learning-rate schedule, moving average,
the random generators, the step and the running loss sums) to ``<folder>/<stage>.pt``, replacing
the previous file atomically, and again when the stage finishes. A trainer given a checkpoint
folder with ``resume`` set continues from the saved step; the batches, timesteps and noise of the
remaining steps come from the restored generators, so a resumed run computes the same steps as an
uninterrupted one (same machine, library versions and thread count).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from difffeat_tune._errors import ConfigError

logger = logging.getLogger(__name__)

#: Default seconds between two checkpoints of a stage.
EVERY_SECONDS = 180.0


@dataclass
class Checkpoints:
    """Where and how often the stages checkpoint.

    Attributes:
        folder: the checkpoint folder (one file per stage).
        resume: continue from the files found there (otherwise a stage starts over and overwrites them).
        every_seconds: seconds between two saves of a stage (it also saves when it finishes).
        every_steps: if set, save every this many steps instead (tests).
    """

    folder: Path
    resume: bool = False
    every_seconds: float = EVERY_SECONDS
    every_steps: int | None = None
    _last: dict[str, float] = field(default_factory=dict, repr=False)

    def path(self, stage: str) -> Path:
        """The checkpoint file of ``stage``."""
        return Path(self.folder) / f"{stage}.pt"

    def load(self, stage: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state of ``stage`` when resuming and one exists, else ``None``.

        Raises:
            ConfigError: the checkpoint was written by another recipe (resuming it would mix two runs).
        """
        self._last[stage] = time.monotonic()
        path = self.path(stage)
        if not self.resume or not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("recipe") != recipe:
            raise ConfigError(f"checkpoint {path} was written by another recipe",
                              "resume with the recipe that wrote it, or start over without --resume")
        logger.info("%s: resuming from step %d (%s)", stage, state["step"], path)
        return state

    def due(self, stage: str, step: int, last_step: int) -> bool:
        """Whether ``stage`` should save after ``step`` (always after its last step)."""
        if step == last_step:
            return True
        if self.every_steps is not None:
            return step % self.every_steps == 0
        return time.monotonic() - self._last.get(stage, 0.0) >= self.every_seconds

    def save(self, stage: str, state: dict[str, Any]) -> None:
        """Write ``state`` (it must hold ``step`` and ``recipe``) as ``stage``'s checkpoint, atomically."""
        path = self.path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, path)  # a reader (or a crash) never sees half a checkpoint
        self._last[stage] = time.monotonic()
        logger.debug("%s: checkpoint at step %d", stage, state["step"])


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The states of ``generator`` and of torch's global generator (which dropout-free code still draws from)."""
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def restore_rng(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` saved."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


def log_losses(sums: dict[str, float], parts: Mapping[str, float], step: int, *, every: int, last: int,
               log: Callable[[int, dict[str, float]], None] | None, start: float) -> dict[str, float]:
    """Add one step's losses to the running sums; every ``every`` steps (and at step ``last``) call
    ``log`` with their means since the last call and the seconds since ``start``.

    Returns:
        The sums to carry on with (new ones after a ``log`` call; they are checkpointed as they are).
    """
    for key, value in parts.items():
        sums[key] = sums.get(key, 0.0) + value
    if log is None or (step % every != 0 and step != last):
        return sums
    count = step % every or every
    log(step, {**{k: v / count for k, v in sums.items()}, "seconds": time.perf_counter() - start})
    return {}


def warmup_cosine(warmup: int, steps: int, final_ratio: float) -> Any:
    """The learning-rate factor of step ``s``: linear warm-up over ``warmup`` steps, then a cosine to ``final_ratio``.

    ``final_ratio`` 1 is a constant rate after warm-up.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


__all__ = ["EVERY_SECONDS", "Checkpoints", "log_losses", "restore_rng", "rng_state", "warmup_cosine"]
