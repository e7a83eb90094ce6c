"""The backbone interface: prepare a batch once, then pooled features for (timesteps x blocks).

Blocks are numbered from 1: block ``b`` is the residual stream after the b-th Transformer block,
so the paper's text grid ``b in {8, ..., 24}`` is valid on Plaid's 24 blocks (0-based numbering
would put 24 out of range) and ``b = 12`` of DiT-XL/2 is ``transformer_blocks[11]``.
Timesteps are integers in ``[0, num_timesteps)`` on the DDPM grid (T = 1000) for both modalities.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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

    def to(self, device: torch.device, *, non_blocking: bool = False) -> Encoded:
        """The same batch with every tensor on ``device`` (``non_blocking`` from pinned memory)."""
        return Encoded(self.ids, {k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors.items()})

    def pin_memory(self) -> Encoded:
        """The same batch in page-locked memory (called by a ``DataLoader`` with ``pin_memory=True``)."""
        return Encoded(self.ids, {k: v.pin_memory() for k, v in self.tensors.items()})


#: ``prepare(inputs, ids, split_name) -> CPU tensors``: PIL images or captions of a batch, in row order.
Prepare = Callable[[list[Any], tuple[str, ...], str], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class InputStage:
    """The CPU half of :meth:`Backbone.encode`: read rows, decode and crop images or tokenise captions.

    It holds no model weights (only what ``prepare`` needs: a resolution, an image processor, a
    tokenizer), so that it can run in data-loader worker processes while the device runs the model
    on earlier batches. ``prepare`` must be picklable (a module-level function or a
    ``functools.partial`` of one) for workers started by ``spawn``.

    Example:
        >>> stage = backbone.input_stage()  # doctest: +SKIP
        >>> batch = backbone.to_device(stage(split, range(8)))  # == backbone.encode(split, range(8))
    """

    modality: Modality
    prepare: Prepare

    def __call__(self, split: Split, indices: Sequence[int]) -> Encoded:
        rows, ids = split_rows(split, indices, self.modality)
        if self.modality == "image":
            assert split.images is not None
            inputs: list[Any] = [split.images.load(i) for i in rows]
        else:
            assert split.captions is not None
            inputs = [split.captions[i] for i in rows]
        return Encoded(ids, self.prepare(inputs, ids, split.name))


def check_split(split: Split, modality: Modality) -> None:
    """Raise :class:`DataError` if ``split`` lacks the input of a ``modality`` backbone."""
    if modality == "image" and split.images is None:
        raise DataError(f"split {split.name!r} has no images, so it cannot go through the image backbone")
    if modality == "text" and split.captions is None:
        raise DataError(f"split {split.name!r} has no captions, so it cannot go through the text backbone")


def split_rows(split: Split, indices: Sequence[int], modality: Modality) -> tuple[list[int], tuple[str, ...]]:
    """Rows ``indices`` of ``split`` and their ids, after checking the split has the modality's input.

    Raises:
        DataError: the split lacks the input, or an index is out of range.
    """
    check_split(split, modality)
    rows = [int(i) for i in indices]
    for i in rows:
        if not 0 <= i < len(split):
            raise DataError(f"split {split.name!r} has {len(split)} rows; index {i} is out of range")
    return rows, tuple(split.ids[i] for i in rows)


class Backbone(ABC):
    """A diffusion Transformer that returns pooled block features at given timesteps.

    Subclasses set ``modality``, ``name``, ``num_blocks``, ``width``, ``num_timesteps`` and
    ``device``, implement the three abstract methods, and either :meth:`input_stage` (with
    :meth:`to_device` where the device does more than receive the tensors, e.g. a VAE) or
    :meth:`encode` itself. A backbone whose blocks differ in width (a U-Net) sets ``width`` to the
    widest and overrides :meth:`block_widths`.
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

    def input_stage(self) -> InputStage | None:
        """The CPU half of :meth:`encode`, for data-loader workers; ``None``: :meth:`encode` runs whole.

        A backbone that returns ``None`` (the default) still extracts, with its inputs prepared
        in the main process.
        """
        return None

    def to_device(self, prepared: Encoded, *, non_blocking: bool = False) -> Encoded:
        """The device half of :meth:`encode`: a batch from :meth:`input_stage` onto :attr:`device`."""
        return prepared.to(self.device, non_blocking=non_blocking)

    def encode(self, split: Split, indices: Sequence[int]) -> Encoded:
        """Prepare rows ``indices`` of ``split`` for :meth:`features` (input stage, then device stage)."""
        stage = self.input_stage()
        if stage is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither input_stage nor encode")
        return self.to_device(stage(split, indices))

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
        check_split(split, self.modality)

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
        """The features of an empty batch: ``[0, width of the block]`` per timestep and block."""
        widths = self.block_widths()
        return {t: {b: torch.zeros((0, widths[b]), device=self.device) for b in blocks} for t in timesteps}

    def split_rows(self, split: Split, indices: Sequence[int]) -> tuple[list[int], tuple[str, ...]]:
        """Rows ``indices`` of ``split`` and their ids, after checking the split has this backbone's input.

        Raises:
            DataError: the split lacks the input, or an index is out of range.
        """
        return split_rows(split, indices, self.modality)


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
