"""The backbone interface: prepare a batch once, then pooled features for (timesteps x blocks).

Blocks are numbered from 1: block ``b`` is the residual stream after the b-th Transformer block,
so the paper's text grid ``b in {8, ..., 24}`` is valid on Plaid's 24 blocks (0-based numbering
would put 24 out of range) and ``b = 12`` of DiT-XL/2 is ``transformer_blocks[11]``.
Timesteps are integers in ``[0, num_timesteps)`` on the DDPM grid (T = 1000) for both modalities.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from difffeat_tune._errors import BackboneError, DataError
from difffeat_tune.data._base import Split

#: Diffusion timesteps are integers in [0, T) on the DDPM grid, T = 1000, for every backbone.
NUM_TIMESTEPS = 1000

Modality = Literal["image", "text"]
MODALITIES: tuple[Modality, ...] = ("image", "text")


@dataclass(frozen=True)
class Encoded:
    """A batch prepared once (VAE latents, or tokens and mask) and reused for every timestep."""

    ids: tuple[str, ...]
    tensors: Mapping[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)


class Backbone(ABC):
    """A diffusion Transformer that returns pooled block features at given timesteps.

    Subclasses set ``modality``, ``name``, ``num_blocks``, ``width``, ``num_timesteps`` and
    ``device`` and implement the four abstract methods. A backbone whose blocks differ in width
    (a U-Net) sets ``width`` to the widest and overrides :meth:`block_widths`.
    """

    modality: Modality
    name: str
    num_blocks: int
    width: int
    num_timesteps: int
    device: torch.device

    def block_widths(self) -> dict[int, int]:
        """``{b: feature width of block b}``; every block has ``width`` unless a subclass says otherwise."""
        return {b: self.width for b in range(1, self.num_blocks + 1)}

    @abstractmethod
    def settings(self) -> dict[str, object]:
        """Every extraction setting that changes the features (seed, noising, length, pooling...)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash identifying the weights and configuration (not the extraction settings)."""

    @abstractmethod
    def encode(self, split: Split, indices: Sequence[int]) -> Encoded:
        """Prepare rows ``indices`` of ``split`` for :meth:`features`."""

    @abstractmethod
    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Pooled features ``{t: {block: float32 [B, width]}}`` on ``self.device``.

        One forward pass covers every block (stopping after the deepest); several timesteps may
        share the pass, since both backbones take a per-sample timestep.
        """

    def validate(self, timesteps: Iterable[int], blocks: Iterable[int]) -> None:
        """Raise :class:`BackboneError` naming the first timestep or block this model cannot give."""
        for t in timesteps:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.num_timesteps:
                raise BackboneError(
                    f"{self.modality} timestep {t!r} is outside [0, {self.num_timesteps})",
                    f"choose integer timesteps from 0 to {self.num_timesteps - 1}",
                )
        for b in blocks:
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= self.num_blocks:
                raise BackboneError(
                    f"{self.modality} block {b!r} is outside 1..{self.num_blocks} of {self.name}",
                    f"blocks are numbered from 1 to {self.num_blocks} (block b = output of the b-th block)",
                )

    def check_split(self, split: Split) -> None:
        """Raise :class:`DataError` if ``split`` lacks this backbone's input."""
        if self.modality == "image" and split.images is None:
            raise DataError(f"split {split.name!r} has no images, so it cannot go through the image backbone")
        if self.modality == "text" and split.captions is None:
            raise DataError(f"split {split.name!r} has no captions, so it cannot go through the text backbone")

    def request(self, timesteps: Sequence[int], blocks: Sequence[int]) -> tuple[list[int], list[int]]:
        """Validate a features request; return its distinct timesteps (in order) and blocks (sorted).

        Raises:
            BackboneError: a timestep or block is out of range, or no block is requested.
        """
        self.validate(timesteps, blocks)
        wanted = sorted(set(blocks))
        if not wanted:
            raise BackboneError("no blocks requested", f"ask for blocks in 1..{self.num_blocks}")
        return list(dict.fromkeys(timesteps)), wanted

    def no_rows(self, timesteps: Sequence[int], blocks: Sequence[int]) -> dict[int, dict[int, torch.Tensor]]:
        """The features of an empty batch: ``[0, width]`` per timestep and block."""
        return {t: {b: torch.zeros((0, self.width), device=self.device) for b in blocks} for t in timesteps}

    def split_rows(self, split: Split, indices: Sequence[int]) -> tuple[list[int], tuple[str, ...]]:
        """Rows ``indices`` of ``split`` and their ids, after checking the split has this backbone's input.

        Raises:
            DataError: the split lacks the input, or an index is out of range.
        """
        self.check_split(split)
        rows = [int(i) for i in indices]
        for i in rows:
            if not 0 <= i < len(split):
                raise DataError(f"split {split.name!r} has {len(split)} rows; index {i} is out of range")
        return rows, tuple(split.ids[i] for i in rows)


def seeded_normal(
    ids: Sequence[str], timestep: int, shape: Sequence[int], seed: int, device: torch.device
) -> torch.Tensor:
    """Gaussian noise ``[len(ids), *shape]``, one stream per (seed, row id, timestep).

    Noise depends on the row, not on its batch or position, so features do not change with the
    batch size and a resumed extraction reproduces the same values.
    """
    out = torch.empty((len(ids), *shape))
    for i, row_id in enumerate(ids):
        out[i] = torch.randn(tuple(shape), generator=row_generator(seed, row_id, timestep))
    return out.to(device)


def row_generator(seed: int, row_id: str, timestep: int) -> torch.Generator:
    """A CPU generator seeded from (seed, row id, timestep) alone: one random stream per row and t.

    Whatever a backbone draws from it (noise, which tokens to mask) depends on the row, not on
    its batch or position.
    """
    digest = hashlib.sha256(f"{seed}\x1f{row_id}\x1f{timestep}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def weights_digest(module: nn.Module) -> str:
    """A cheap identity of a module's weights: names, shapes and float64 sums of every tensor."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            if tensor.is_floating_point():
                h.update(repr(round(float(tensor.double().sum()), 6)).encode())
                h.update(repr(round(float(tensor.double().abs().sum()), 6)).encode())
    return h.hexdigest()[:16]
