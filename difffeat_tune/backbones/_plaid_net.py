"""A pure-PyTorch continuous text diffusion Transformer compatible with Plaid 1B's released weights.

Written from a description of the public Plaid model (github igul222/plaid); no code of that
repository is used. The module names, parameter names and shapes match the released
``model.pt``, ``noise_schedule.pt``, ``gamma_bounds.pt`` and ``embedding_matrix.pt`` so the
files load with strict key matching:

* :class:`PlaidNet`: the denoiser. ``net.blocks`` is an :class:`~torch.nn.ModuleList` whose
  modules return the residual stream ``[B, L, dim]``, so
  :func:`~difffeat_tune.backbones._hooks.capture_blocks` reads block outputs directly.
* :class:`NoiseSchedule`: the learned monotone schedule, normalised to ``g~(0) = 0``,
  ``g~(1) = 1`` and evaluated in float64.
* :class:`GammaBounds`: ``gamma_0`` and ``gamma_1``, so ``gamma(t) = gamma_0 + (gamma_1 - gamma_0) g~(t)``.
* :class:`EmbeddingMatrix`: the token embedding matrix ``[vocab, embed_dim]``, l2-normalised at use.

The model's prediction (one place: :meth:`PlaidNet.forward`, as in the original's forward):

    logits = readout + (alpha / sigma^2) * (z . E^T)
    readout = output_linear(LayerNorm(h) * 256 / dim)            (muP readout, base width 256)
    x_hat  = softmax(logits) @ E                                  (:func:`clean_prediction`)

with ``h`` the residual stream after the last block, ``z`` the noisy input embeddings, ``E`` the
row-normalised embedding matrix and ``alpha^2 = sigmoid(-gamma)``, ``sigma^2 = sigmoid(gamma)`` per
sample. The second term (:func:`z_logits`) is part of the prediction of the clean tokens, not a
sampling detail: every DDIM inversion step goes through it. :meth:`PlaidNet.readout` gives the
readout alone.

The fused CUDA kernels of the original (RMSNorm, rotary, flash attention, fused MLP) are
replaced by plain PyTorch that computes the same functions: RMSNorm with eps 1e-5, NeoX-style
rotate-half rotary over the whole head dimension, bidirectional
:func:`~torch.nn.functional.scaled_dot_product_attention`, and a tanh-GELU MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Size of the sinusoidal gamma embedding fed to ``gamma_linear`` (32 frequencies, sin and cos).
GAMMA_EMBED_DIM = 64
#: Hidden width of the learned noise schedule's MLP in the released weights.
SCHEDULE_WIDTH = 1024
#: Base width of the muP readout: logits are ``output_linear(norm(x) * MUP_BASE_WIDTH / dim)``.
MUP_BASE_WIDTH = 256
#: Rotary base frequency.
ROTARY_BASE = 10000.0
#: Epsilon of every RMSNorm and of the output LayerNorm.
NORM_EPS = 1e-5
#: Added to row norms before dividing when the embedding matrix is normalised.
EMBED_NORM_EPS = 1e-8


@dataclass(frozen=True)
class PlaidConfig:
    """Architecture of a Plaid denoiser.

    Attributes:
        dim: width of the residual stream.
        n_blocks: number of Transformer blocks.
        n_heads: attention heads (``dim`` must be divisible by it; the head dim must be even).
        embed_dim: width of the token embeddings the diffusion runs in.
        vocab_size: number of tokens (rows of the embedding matrix and of the readout).
    """

    dim: int
    n_blocks: int
    n_heads: int
    embed_dim: int
    vocab_size: int

    def __post_init__(self) -> None:
        for field_name in ("dim", "n_blocks", "n_heads", "embed_dim", "vocab_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PlaidConfig.{field_name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"PlaidConfig.dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"PlaidConfig head dim {self.dim // self.n_heads} must be even for rotary")

    @classmethod
    def plaid_1b(cls) -> PlaidConfig:
        """The configuration of the released Plaid 1B model."""
        return cls(dim=2048, n_blocks=24, n_heads=32, embed_dim=16, vocab_size=32768)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain, computed in float32."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """NeoX-style rotary position embedding over the whole head dimension.

    Holds the ``inv_freq`` buffer (saved in the state dict, as in the released weights).
    """

    def __init__(self, head_dim: int, base: float = ROTARY_BASE) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def cos_sin(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and sines ``[length, head_dim]`` for positions ``0..length-1`` (float32)."""
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device=device, dtype=torch.float32))
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, H, head_dim]`` by position (float32 maths, result in ``x``'s dtype)."""
    x32 = x.float()
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class MLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))`` with a 4x hidden width and no biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False)
        self.fc2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class PlaidBlock(nn.Module):
    """One pre-norm Transformer block; returns the residual stream ``[B, L, dim]``.

    ``x + r * attn(rmsnorm1(x))`` then ``x + r * mlp(rmsnorm2(x))`` with ``r = 1/sqrt(n_blocks)``.
    Attention is bidirectional (no mask: Plaid pads with real end-of-text tokens).
    """

    def __init__(self, config: PlaidConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.residual_scale = 1.0 / math.sqrt(config.n_blocks)
        self.rmsnorm1 = RMSNorm(config.dim)
        self.attn_qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.attn_out = nn.Linear(config.dim, config.dim, bias=False)
        self.rmsnorm2 = RMSNorm(config.dim)
        self.mlp = MLP(config.dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.attn_qkv(self.rmsnorm1(x)).view(batch, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=False
        )
        attn = attn.transpose(1, 2).reshape(batch, length, dim)
        x = x + self.residual_scale * self.attn_out(attn)
        x = x + self.residual_scale * self.mlp(self.rmsnorm2(x))
        return x


def schedule_dtype(device: torch.device) -> torch.dtype:
    """float64 for schedule maths, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def alpha_sigma_squared(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha^2, sigma^2) = (sigmoid(-gamma), sigmoid(gamma))``, in ``gamma``'s dtype."""
    return torch.sigmoid(-gamma), torch.sigmoid(gamma)


class PlaidNet(nn.Module):
    """The Plaid denoiser: noisy embeddings and log-SNR ``gamma`` in, token logits out.

    Args:
        config: the architecture.

    The state dict has exactly the keys of the released ``model.pt`` (see the module doc).
    Parameters are created by the default PyTorch initialisers (cheap under
    ``torch.device("meta")``); use :meth:`init_weights` for a seeded random model.
    """

    def __init__(self, config: PlaidConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.input_linear = nn.Linear(config.embed_dim, dim, bias=False)
        self.selfcond_linear = nn.Linear(config.embed_dim, dim, bias=False)
        self.gamma_linear = nn.Linear(GAMMA_EMBED_DIM, dim, bias=False)
        self.rotary_emb = RotaryEmbedding(config.head_dim)
        self.blocks = nn.ModuleList(PlaidBlock(config) for _ in range(config.n_blocks))
        self.output_norm = nn.LayerNorm(dim, eps=NORM_EPS, bias=False)
        self.output_linear = nn.Linear(dim, config.vocab_size, bias=True)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Seeded random initialisation (for tiny test models), on CPU parameters.

        Linear weights ~ N(0, 1/fan_in); norm gains 1; readout bias 0. The rotary buffer is
        left as computed.

        Args:
            generator: a CPU generator, already seeded.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                module.weight.fill_(1.0)

    def gamma_embedding(self, gamma: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding ``[B, 64]`` of ``gamma`` ``[B]``: frequencies ``exp(linspace(-5, 5, 32))``."""
        dtype = schedule_dtype(gamma.device)
        freqs = torch.exp(torch.linspace(-5.0, 5.0, GAMMA_EMBED_DIM // 2, device=gamma.device, dtype=dtype))
        angles = freqs[None, :] * gamma.to(dtype)[:, None]
        return torch.cat((angles.sin(), angles.cos()), dim=-1).float()

    def readout(
        self, z: torch.Tensor, gamma: torch.Tensor, x_selfcond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The readout alone, ``output_linear(LayerNorm(h) * 256 / dim)`` ``[B, L, vocab]`` (float32).

        This is the part of the logits the Transformer computes; :meth:`forward` adds the ``z``
        term to give the model's logits.

        Args:
            z: noisy embeddings ``[B, L, embed_dim]``.
            gamma: log-SNR ``[B]`` (one per sample, so several timesteps can share a pass).
            x_selfcond: self-conditioning input ``[B, L, embed_dim]``; ``None`` means zeros, as in
                the original's first sampling step and in a single pass (``selfcond_linear`` has
                no bias, so zeros contribute nothing).
        """
        if z.dim() != 3 or z.shape[-1] != self.config.embed_dim:
            raise ValueError(f"z must be [B, L, {self.config.embed_dim}], got {tuple(z.shape)}")
        if gamma.shape != (z.shape[0],):
            raise ValueError(f"gamma must be [B] = [{z.shape[0]}], got {tuple(gamma.shape)}")
        dtype = schedule_dtype(z.device)
        alpha_sq, sigma_sq = alpha_sigma_squared(gamma.to(dtype))
        scale = torch.rsqrt(alpha_sq / self.config.embed_dim + sigma_sq).float()
        x = self.input_linear(z.float() * scale[:, None, None])
        if x_selfcond is not None:
            x = x + self.selfcond_linear(x_selfcond.float() * math.sqrt(self.config.embed_dim))
        x = x + self.gamma_linear(self.gamma_embedding(gamma))[:, None, :]
        cos, sin = self.rotary_emb.cos_sin(z.shape[1], z.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.output_norm(x.float())
        x = x * (MUP_BASE_WIDTH / self.config.dim)
        return self.output_linear(x).float()

    def forward(
        self,
        z: torch.Tensor,
        gamma: torch.Tensor,
        embeddings: torch.Tensor,
        x_selfcond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's logits of the clean tokens ``[B, L, vocab]`` (float32): readout plus the z term.

        ``logits = readout(z, gamma, x_selfcond) + (alpha / sigma^2) * (z . E^T)``, as the original
        model computes them (its ``bias_scale`` is 1 outside the first training steps).

        Args:
            z: noisy embeddings ``[B, L, embed_dim]``.
            gamma: log-SNR ``[B]``.
            embeddings: the row-normalised embedding matrix ``E`` ``[vocab, embed_dim]``
                (:meth:`EmbeddingMatrix.normalized`).
            x_selfcond: self-conditioning input; ``None`` means zeros (see :meth:`readout`).
        """
        return self.readout(z, gamma, x_selfcond) + z_logits(z, gamma, embeddings)


def z_logits(z: torch.Tensor, gamma: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The z term of Plaid's logits: ``(alpha / sigma^2) * (z . E^T)`` ``[B, L, vocab]`` (float32).

    The per-sample coefficient is computed in the schedule's precision (float64 except on MPS).

    Args:
        z: noisy embeddings ``[B, L, embed_dim]``.
        gamma: log-SNR ``[B]``.
        embeddings: the row-normalised embedding matrix ``E`` ``[vocab, embed_dim]``.
    """
    alpha_sq, sigma_sq = alpha_sigma_squared(gamma.to(schedule_dtype(z.device)))
    coef = (alpha_sq.sqrt() / sigma_sq).float()
    with torch.autocast(device_type=z.device.type, enabled=False):
        return coef[:, None, None] * (z.float() @ embeddings.float().T)


def clean_prediction(logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The model's prediction of the clean embeddings, ``x_hat = softmax(logits) @ E`` (float32)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return torch.softmax(logits.float(), dim=-1) @ embeddings.float()


class NoiseSchedule(nn.Module):
    """The learned monotone noise schedule, normalised to ``g~(0) = 0`` and ``g~(1) = 1``.

    ``h(t) = tanh((t - 0.5) softplus(W1)^T + b1) (0.01 softplus(W2))^T`` is increasing in ``t``
    (positive weights, increasing tanh), and ``g~(t) = (h(t) - h(0)) / (h(1) - h(0))``.
    Keys ``W1 [width, 1]``, ``b1 [width]``, ``W2 [1, width]`` as in ``noise_schedule.pt``.

    Args:
        width: hidden width (1024 in the released weights).
    """

    def __init__(self, width: int = SCHEDULE_WIDTH) -> None:
        super().__init__()
        self.W1 = nn.Parameter(torch.zeros(width, 1))
        self.b1 = nn.Parameter(torch.zeros(width))
        self.W2 = nn.Parameter(torch.zeros(1, width))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Seeded random initialisation (standard normal entries) for tiny test models."""
        for param in (self.W1, self.b1, self.W2):
            param.copy_(torch.randn(param.shape, generator=generator))

    def _h(self, t: torch.Tensor) -> torch.Tensor:
        dtype = schedule_dtype(t.device)
        w1 = F.softplus(self.W1.to(dtype))
        w2 = 0.01 * F.softplus(self.W2.to(dtype))
        hidden = torch.tanh((t.to(dtype)[:, None] - 0.5) @ w1.T + self.b1.to(dtype))
        return (hidden @ w2.T)[:, 0]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Normalised schedule ``g~(t)`` for continuous times ``t`` ``[N]`` in [0, 1] (float64)."""
        ends = self._h(torch.tensor([0.0, 1.0], device=t.device))
        return (self._h(t) - ends[0]) / (ends[1] - ends[0])


class GammaBounds(nn.Module):
    """``gamma_0`` and ``gamma_1``, the log-SNR bounds (scalars, keys as in ``gamma_bounds.pt``)."""

    def __init__(self, gamma_0: float = 0.0, gamma_1: float = 0.0) -> None:
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_1)))

    def forward(self, g_tilde: torch.Tensor) -> torch.Tensor:
        """``gamma = gamma_0 + (gamma_1 - gamma_0) * g~`` in ``g_tilde``'s dtype."""
        g0 = self.gamma_0.to(g_tilde.dtype)
        g1 = self.gamma_1.to(g_tilde.dtype)
        return g0 + (g1 - g0) * g_tilde


class EmbeddingMatrix(nn.Module):
    """The token embedding matrix ``[vocab, embed_dim]`` (key ``matrix``), l2-normalised at use."""

    def __init__(self, vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.zeros(vocab_size, embed_dim))

    def normalized(self) -> torch.Tensor:
        """Rows divided by ``(norm + 1e-8)``, float32."""
        matrix = self.matrix.float()
        return matrix / (matrix.norm(dim=1, keepdim=True) + EMBED_NORM_EPS)
