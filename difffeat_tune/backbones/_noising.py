"""How a latent-diffusion family noises a latent to timestep t in [0, 1000), and what t it is told.

Two kinds, each built from the pipeline's own ``scheduler/scheduler_config.json``:

* :class:`DDPMNoising` (PixArt, Stable Diffusion 1.x/2.x): the discrete DDPM forward process the
  model was trained with, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, computed by
  ``DDPMScheduler.from_config(<the pipeline's scheduler config>).add_noise`` in float32. The
  pipelines ship a sampler (DPM-Solver, PNDM, DDIM, Euler), whose ``add_noise`` depends on its
  inference steps; the DDPM scheduler built from the same config has the same betas
  (``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``, zero-SNR rescaling) and
  noises at any training step. The model is told the integer t.

* :class:`FlowNoising` (SD3, Flux): rectified flow, ``x_t = (1 - sigma) x0 + sigma eps``, with
  sigma the scheduler's own shifted sigma of ``u = t / 1000``:
  ``sigma = s u / (1 + (s - 1) u)``, where ``s`` is the scheduler's ``shift`` (SD3: 3.0), or,
  when it shifts dynamically (Flux-dev), ``exp(mu)`` with ``mu`` interpolated from the number of
  image tokens at the extraction resolution as the pipeline does (``calculate_shift``; ``mu``
  itself for ``time_shift_type="linear"``). This is how ``FlowMatchEulerDiscreteScheduler``
  maps its 1000 training steps to sigmas. The model is told ``1000 * sigma`` (SD3's timestep;
  Flux's pipeline passes ``sigma`` and the transformer multiplies by 1000).
  Why shifted: the shift is part of how these checkpoints were trained and are sampled at their
  resolution, and with SD3's shift 3 it puts a given t at nearly the signal-to-noise ratio of
  DDPM's linear schedule (SNR at t = 50: 40 shifted, 32 DDPM, 361 unshifted; t = 100: 9.0, 8.5,
  81; t = 150: 3.6, 3.7, 32), so grids such as the paper's t in {10, ..., 150} mean comparable
  noise across families. Inference-only spacings of the
  scheduler (``shift_terminal``, Karras/exponential/beta sigmas) are not applied: they space
  sampling steps, they do not define the training noise level of a step.

Noise ``eps`` is drawn per (seed, row id, t) by :func:`~difffeat_tune.backbones._base.seeded_normal`,
so features do not depend on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from diffusers import DDPMScheduler

from difffeat_tune._errors import BackboneError

#: Every family's discrete timestep grid (t in [0, 1000)).
NUM_TIMESTEPS = 1000


class DDPMNoising:
    """The DDPM forward process of the pipeline's scheduler config (see the module docstring)."""

    kind = "ddpm"

    def __init__(self, scheduler_config: Mapping[str, object], family: str) -> None:
        name = str(scheduler_config.get("_class_name", ""))
        if name.startswith("FlowMatch"):
            raise BackboneError(f"the {family} family expects a DDPM-trained model, but the pipeline's scheduler "
                                f"is {name}", "choose the flow-matching family (sd3 or flux) for this checkpoint")
        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config))
        self.num_timesteps = int(self.scheduler.config.num_train_timesteps)
        if self.num_timesteps != NUM_TIMESTEPS:
            raise BackboneError(f"the pipeline's scheduler has {self.num_timesteps} training steps, not {NUM_TIMESTEPS}",
                                "only 1000-step DDPM schedules are supported")
        self.config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}

    def noisy(self, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """``add_noise`` in float32 (it casts the schedule to the sample's dtype)."""
        steps = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0.float(), eps.float(), steps)

    def model_timestep(self, t: int) -> float:
        return float(t)

    def settings(self) -> dict[str, object]:
        return {"kind": self.kind, "add_noise": "DDPMScheduler.from_config(pipeline scheduler)"}


class FlowNoising:
    """Rectified-flow noising at the scheduler's shifted sigma of ``t / 1000`` (see the module docstring).

    Args:
        scheduler_config: the pipeline's ``FlowMatchEulerDiscreteScheduler`` config.
        image_tokens: image tokens at the extraction resolution (for a dynamic shift).
        family: for messages.
    """

    kind = "flow-matching"

    def __init__(self, scheduler_config: Mapping[str, object], image_tokens: int, family: str) -> None:
        name = str(scheduler_config.get("_class_name", ""))
        if not name.startswith("FlowMatch"):
            raise BackboneError(f"the {family} family expects a flow-matching scheduler, but the pipeline's is "
                                f"{name or 'unnamed'}", "choose the DDPM family that matches this checkpoint")
        self.num_timesteps = int(scheduler_config.get("num_train_timesteps", NUM_TIMESTEPS))  # type: ignore[arg-type]
        if self.num_timesteps != NUM_TIMESTEPS:
            raise BackboneError(f"the pipeline's scheduler has {self.num_timesteps} training steps, not {NUM_TIMESTEPS}",
                                "only 1000-step flow schedules are supported")
        if scheduler_config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            mu = calculate_shift(
                image_tokens,
                scheduler_config.get("base_image_seq_len", 256),
                scheduler_config.get("max_image_seq_len", 4096),
                scheduler_config.get("base_shift", 0.5),
                scheduler_config.get("max_shift", 1.15),
            )
            linear = scheduler_config.get("time_shift_type", "exponential") == "linear"
            self.shift = float(mu) if linear else math.exp(mu)
        else:
            self.shift = float(scheduler_config.get("shift", 1.0))  # type: ignore[arg-type]
        self.config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}

    def sigma(self, t: int) -> float:
        """The noise level of timestep ``t``: the shifted ``t / 1000``."""
        u = t / self.num_timesteps
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def noisy(self, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        sigma = self.sigma(t)
        return (1.0 - sigma) * x0.float() + sigma * eps.float()

    def model_timestep(self, t: int) -> float:
        """The transformer's timestep value, ``1000 * sigma``."""
        return self.num_timesteps * self.sigma(t)

    def settings(self) -> dict[str, object]:
        return {"kind": self.kind, "sigma": "shift*u/(1+(shift-1)*u), u=t/1000", "shift": round(self.shift, 6)}


Noising = DDPMNoising | FlowNoising
