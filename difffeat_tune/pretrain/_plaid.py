"""Train a Plaid-architecture text diffusion model with Plaid's objective (Gulrajani & Hashimoto 2023).

Continuous-time variational diffusion over the row-normalised embedding matrix E (learned,
dimension 16), with the learned monotone noise schedule and learned gamma bounds of the release
files, and the model's prediction ``x_hat = softmax(logits) @ E`` from the complete logits
(readout plus the z term, :meth:`~difffeat_tune.backbones._plaid_net.PlaidNet.forward`). Per batch:

* a share of the rows (``reconst_share``) is scored at t = 0 by the reconstruction term, the
  cross-entropy of the clean tokens given ``z_0``; the others get t from a low-discrepancy
  uniform draw on (0, 1] and the diffusion term, the continuous-time bound
  ``-0.5 * SNR'(t) * ||E[x] - x_hat(z_t, t)||^2`` (summed over the embedding dimensions, averaged
  over positions); the prior term is the KL of ``z_1`` to N(0, I);
* the noise schedule minimises the *variance* of the diffusion term (Plaid's gradient rescaling:
  the schedule's gradient of each row is multiplied by twice that row's loss), the rest of the
  model its mean;
* self-conditioning on a quarter of the rows: a first pass without gradient gives ``x_hat``,
  fed to ``selfcond_linear`` in the second; those rows do not train the schedule or E;
* the original's initialisation: zero ``selfcond_linear``, ``gamma_linear`` and readout.

* the z term's scale warms up from 0 to 1 over the first ``bias_warmup`` steps, as in Plaid (5000
  of 92000 steps there; a larger share here, so that the small network learns to read the tokens
  itself at low noise instead of leaving it all to the z term, which would leave its deep
  features empty of the caption at small t).

* AdamW after a short warm-up, every rate decaying along a cosine to 5% of its peak, and an
  exponential moving average of all four modules' weights (decay 0.999), which is what is saved;
* width 48 (a text feature is the model's width: 48 numbers): the extraction of the embedded
  text grid costs about 1.5x that of width 32 on 2 cores, width 64 about 2.5x, which the
  two-minute budget of ``make demo`` does not allow.

Simplified (documented, the forward, files and noising semantics stay Plaid's): a fixed share of
reconstruction rows instead of Plaid's adaptive one; plain AdamW with one learning rate per
module group instead of muP's; captions padded with end-of-text to a fixed length instead of
packed web text.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from difffeat_tune.backbones._plaid_net import (
    EmbeddingMatrix,
    GammaBounds,
    NoiseSchedule,
    PlaidConfig,
    PlaidNet,
    alpha_sigma_squared,
    clean_prediction,
    z_logits,
)
from difffeat_tune.pretrain._checkpoint import Checkpoints, log_losses, restore_rng, rng_state, warmup_cosine

#: ``log(step, losses)`` is called every ``log_every`` steps.
Log = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class PlaidRecipe:
    """Architecture and training of the tiny Plaid model.

    Attributes:
        dim: residual width.
        n_blocks: Transformer blocks (24, Plaid 1B's).
        n_heads: attention heads.
        embed_dim: diffusion embedding width (16, Plaid's).
        gamma_0, gamma_1: initial log-SNR bounds (Plaid's -3 and 6).
        steps: optimiser steps.
        batch_size: captions per step.
        lr: peak learning rate of the denoiser (after warm-up).
        side_lr: learning rate of the schedule, bounds and embedding matrix (Plaid's 1e-2).
        weight_decay: decoupled weight decay of the denoiser.
        warmup: warm-up steps.
        final_lr_ratio: every rate decays along a cosine to its peak x this at the last step (1: constant).
        grad_clip: gradient-norm clipping.
        reconst_share: share of each batch scored at t = 0 (reconstruction term).
        selfcond_share: share of each batch with self-conditioning (Plaid's 1/4).
        bias_warmup: steps over which the z term's scale grows from 0 to 1.
        ema: decay of the weights' moving average, which is what is saved (0: the trained weights).
        seed: seed of the initialisation, batches and noise.
        log_every: steps between two ``log`` calls.
    """

    dim: int = 48
    n_blocks: int = 24
    n_heads: int = 3
    embed_dim: int = 16
    gamma_0: float = -3.0
    gamma_1: float = 6.0
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-3
    side_lr: float = 1e-2
    weight_decay: float = 4e-5
    warmup: int = 200
    final_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    reconst_share: float = 0.125
    selfcond_share: float = 0.25
    bias_warmup: int = 3000
    ema: float = 0.999
    seed: int = 0
    log_every: int = 100


@dataclass
class PlaidModules:
    """The four modules of Plaid's release files."""

    net: PlaidNet
    schedule: NoiseSchedule
    bounds: GammaBounds
    embedding: EmbeddingMatrix

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.net, self.schedule, self.bounds, self.embedding) for p in m.parameters()]

    def train(self, mode: bool = True) -> None:
        for module in (self.net, self.schedule, self.bounds, self.embedding):
            module.train(mode)


def build_plaid_modules(recipe: PlaidRecipe, vocab_size: int, generator: torch.Generator) -> PlaidModules:
    """Fresh modules with Plaid's initialisation (zero self-conditioning, gamma input and readout)."""
    config = PlaidConfig(dim=recipe.dim, n_blocks=recipe.n_blocks, n_heads=recipe.n_heads,
                         embed_dim=recipe.embed_dim, vocab_size=vocab_size)
    net = PlaidNet(config)
    net.init_weights(generator)
    with torch.no_grad():
        for linear in (net.selfcond_linear, net.gamma_linear, net.output_linear):
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    schedule = NoiseSchedule()
    schedule.init_weights(generator)
    embedding = EmbeddingMatrix(vocab_size, recipe.embed_dim)
    with torch.no_grad():
        embedding.matrix.copy_(torch.randn(embedding.matrix.shape, generator=generator))
    return PlaidModules(net, schedule, GammaBounds(recipe.gamma_0, recipe.gamma_1), embedding)


def _gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)), elementwise."""
    return 0.5 * (std**2 + mean**2 - 1.0) - torch.log(std)


def plaid_logits(modules: PlaidModules, z: torch.Tensor, gamma: torch.Tensor, embeddings: torch.Tensor,
                 x_selfcond: torch.Tensor | None, bias_scale: float) -> torch.Tensor:
    """The logits in training: ``readout + bias_scale * z term`` (``bias_scale`` 1 is the model's forward)."""
    if bias_scale == 1.0:
        return modules.net(z, gamma, embeddings, x_selfcond)
    return modules.net.readout(z, gamma, x_selfcond) + bias_scale * z_logits(z, gamma, embeddings)


def plaid_loss(modules: PlaidModules, tokens: torch.Tensor, recipe: PlaidRecipe,
               generator: torch.Generator, bias_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Plaid's training loss of one batch of token ids ``[B, L]`` (see the module docstring)."""
    batch, length = tokens.shape
    n_reconst = max(1, round(batch * recipe.reconst_share))
    embeddings = modules.embedding.normalized()
    # Times: the first rows at 0 (reconstruction), the others low-discrepancy on (0, 1].
    offset = float(torch.rand((), generator=generator, dtype=torch.float64))
    t_diff = (torch.arange(batch - n_reconst, dtype=torch.float64) + offset) / (batch - n_reconst)
    t = torch.cat([torch.zeros(n_reconst, dtype=torch.float64), t_diff]).requires_grad_(True)
    selfcond = torch.zeros(batch, dtype=torch.bool)
    selfcond[torch.randperm(batch, generator=generator)[: round(batch * recipe.selfcond_share)]] = True

    with torch.enable_grad():
        g_tilde = torch.cat([modules.schedule(t[:n_reconst]).detach(), modules.schedule(t[n_reconst:])])
        g_tilde_prime = torch.autograd.grad(g_tilde.sum(), [t], create_graph=True)[0]
    loss_rows: dict[str, torch.Tensor] = {}

    def variance_gradient(grad: torch.Tensor) -> torch.Tensor:
        # The schedule minimises E[loss^2]: its per-row gradient times 2 * the row's loss.
        scaled = grad.clone()
        scaled[n_reconst:] *= 2.0 * loss_rows["diffusion"][n_reconst:]
        return scaled

    for tensor in (g_tilde, g_tilde_prime):
        if tensor.requires_grad:
            tensor.register_hook(variance_gradient)
    gamma_0, gamma_1 = modules.bounds.gamma_0.double(), modules.bounds.gamma_1.double()
    gamma = gamma_0 + (gamma_1 - gamma_0) * g_tilde
    gamma_prime = (gamma_1 - gamma_0) * g_tilde_prime
    gamma = torch.where(selfcond, gamma.detach(), gamma)
    gamma_prime = torch.where(selfcond, gamma_prime.detach(), gamma_prime)
    alpha_sq, sigma_sq = alpha_sigma_squared(gamma)
    alpha, sigma = alpha_sq.sqrt(), sigma_sq.sqrt()
    snr_prime = -torch.exp(-gamma) * gamma_prime  # SNR = exp(-gamma)

    x_embed = embeddings[tokens]
    x_embed = torch.where(selfcond[:, None, None], x_embed.detach(), x_embed)
    noise = torch.randn(x_embed.shape, generator=generator)
    z = alpha.float()[:, None, None] * x_embed + sigma.float()[:, None, None] * noise

    x_selfcond = torch.zeros_like(z)
    if selfcond.any():
        with torch.no_grad():
            rows = selfcond.nonzero()[:, 0]
            first = plaid_logits(modules, z[rows], gamma[rows].detach(), embeddings.detach(), None, bias_scale)
            x_selfcond[rows] = clean_prediction(first, embeddings.detach())
    logits = plaid_logits(modules, z, gamma, embeddings, x_selfcond, bias_scale)
    x_hat = clean_prediction(logits, embeddings)

    reconst = F.cross_entropy(logits[:n_reconst].reshape(-1, logits.shape[-1]), tokens[:n_reconst].reshape(-1),
                              reduction="none").view(n_reconst, length).mean(dim=1).double()
    diffusion = (x_embed - x_hat).pow(2).mean(dim=1).double().sum(dim=1)
    diffusion = -0.5 * snr_prime * diffusion
    # Detached: a hook that held the graph's own tensor would make a cycle through autograd's
    # nodes that Python cannot collect (the whole graph of every step would leak).
    loss_rows["diffusion"] = diffusion.detach()
    alpha_1, sigma_1 = (v.sqrt() for v in alpha_sigma_squared(gamma_1))
    prior = _gaussian_kl(alpha_1.float() * x_embed, sigma_1.float().expand_as(x_embed)).sum(dim=2).mean()
    loss = reconst.mean() + diffusion[n_reconst:].mean() + prior
    return loss, {"reconst": float(reconst.mean().detach()), "diffusion": float(diffusion[n_reconst:].mean().detach()),
                  "prior": float(prior.detach()), "gamma_0": float(gamma_0.detach()), "gamma_1": float(gamma_1.detach())}


def _average(modules: PlaidModules) -> PlaidModules:
    """A frozen copy of ``modules`` (the moving average starts as the initial weights)."""
    copied = copy.deepcopy(modules)
    for module in (copied.net, copied.schedule, copied.bounds, copied.embedding):
        module.requires_grad_(False)
    return copied


def _state(modules: PlaidModules) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(modules, name).state_dict() for name in ("net", "schedule", "bounds", "embedding")}


def _load_state(modules: PlaidModules, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, values in state.items():
        getattr(modules, name).load_state_dict(values)


def train_plaid(tokens: torch.Tensor, vocab_size: int, recipe: PlaidRecipe, *, log: Log | None = None,
                modules: PlaidModules | None = None, checkpoints: Checkpoints | None = None,
                stage: str = "plaid") -> PlaidModules:
    """Train on padded token ids ``[N, L]``; return the modules (their moving average if ``recipe.ema``) in eval mode.

    Args:
        tokens: captions tokenised and padded with end-of-text (id 0) to a common length.
        vocab_size: rows of the embedding matrix and of the readout.
        recipe: architecture and schedule.
        log: progress callback (mean losses since the last call).
        modules: continue training these modules instead of new ones (tests use a few steps); with
            ``recipe.ema`` 0 they are the trained modules returned.
        checkpoints: save the whole training state there every few minutes, and resume from it.
        stage: the checkpoint's name.
    """
    generator = torch.Generator().manual_seed(recipe.seed)
    modules = modules if modules is not None else build_plaid_modules(recipe, vocab_size, generator)
    modules.train()
    average = _average(modules) if recipe.ema > 0 else None
    groups = [
        {"params": list(modules.net.parameters()), "lr": recipe.lr, "weight_decay": recipe.weight_decay},
        {"params": list(modules.schedule.parameters()), "lr": recipe.side_lr, "weight_decay": 0.0},
        {"params": list(modules.bounds.parameters()), "lr": recipe.side_lr, "weight_decay": 0.0},
        {"params": list(modules.embedding.parameters()), "lr": recipe.side_lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup, recipe.steps,
                                                                          recipe.final_lr_ratio))
    sums: dict[str, float] = {}
    first = 1
    saved = checkpoints.load(stage, asdict(recipe)) if checkpoints is not None else None
    if saved is not None:
        _load_state(modules, saved["model"])
        if average is not None:
            _load_state(average, saved["average"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        restore_rng(generator, saved["rng"])
        sums, first = dict(saved["sums"]), saved["step"] + 1
    start = time.perf_counter()
    for step in range(first, recipe.steps + 1):
        index = torch.randint(0, tokens.shape[0], (recipe.batch_size,), generator=generator)
        bias_scale = min(1.0, step / recipe.bias_warmup) if recipe.bias_warmup > 0 else 1.0
        loss, parts = plaid_loss(modules, tokens[index], recipe, generator, bias_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        if average is not None:
            with torch.no_grad():
                decay = min(recipe.ema, (1 + step) / (10 + step))  # a short warm-up of the average too
                for avg, live in zip(average.parameters(), modules.parameters()):
                    avg.lerp_(live, 1 - decay)
        parts["loss"] = float(loss.detach())
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(f"Plaid training diverged at step {step}: {parts}")
        sums = log_losses(sums, parts, step, every=recipe.log_every, last=recipe.steps, log=log, start=start)
        if checkpoints is not None and checkpoints.due(stage, step, recipe.steps):
            checkpoints.save(stage, {"recipe": asdict(recipe), "step": step, "model": _state(modules),
                                     "average": _state(average) if average is not None else None,
                                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                     "rng": rng_state(generator), "sums": sums})
    result = average if average is not None else modules
    result.train(False)
    modules.train(False)
    return result
