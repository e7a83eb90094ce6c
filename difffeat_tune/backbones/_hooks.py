"""Read pooled hidden states of several blocks in one forward pass, then stop early.

Forward hooks are registered on every requested block and always removed by a context
manager (so a failed pass never leaves hooks behind). The hook of the deepest requested block
raises a private exception that ends the pass: blocks after it are never computed, without
copying the library's ``forward``. With ``stop=False`` the pass runs to the end instead and
its result is kept (:attr:`BlockCapture.output`), so one pass gives features and the model's
output (e.g. logits for a DDIM inversion step).

A block's output is not always its tokens: joint blocks of SD3 and Flux return
``(encoder_hidden_states, hidden_states)``, so the image tokens are ``output[1]``
(:func:`joint_image_tokens`), and a U-Net block returns feature maps ``[B, C, H, W]``. A
``select`` callable picks the tokens ``[B, N, D]`` from a block's output before pooling; the
default, :func:`first_output`, is ``output[0]`` for a tuple and the output itself otherwise.
The blocks may be any sequence of modules in forward order (e.g. Flux's joint blocks followed
by its single blocks), not only one ``nn.ModuleList``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from difffeat_tune._errors import BackboneError

#: Pools a block's tokens ``[B, N, D]`` to ``[B, D]`` on the device, before anything leaves it.
Pool = Callable[[torch.Tensor], torch.Tensor]
#: Picks the tokens ``[B, N, D]`` to pool from whatever a block returns.
Select = Callable[[object], torch.Tensor]


class _StopForward(Exception):
    """Raised by the deepest hook to skip the rest of the forward pass."""


def first_output(output: object) -> torch.Tensor:
    """The block's tokens when it returns them alone or first in a tuple (DiT, PixArt, Plaid)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def joint_image_tokens(output: object) -> torch.Tensor:
    """The image tokens of an SD3/Flux block, which returns ``(encoder_hidden_states, hidden_states)``."""
    if not isinstance(output, tuple) or len(output) != 2:
        raise BackboneError(
            f"a joint block returned {type(output).__name__}, not (encoder_hidden_states, hidden_states)",
            "this diffusers version changed the block's outputs; report it with the diffusers version",
        )
    return output[1]


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the token axis, in float32."""
    return tokens.float().mean(dim=1)


def masked_mean_pool(mask: torch.Tensor) -> Pool:
    """Mean over the tokens where ``mask`` ([B, N], bool) is true, in float32."""
    weights = mask.float()
    counts = weights.sum(dim=1, keepdim=True).clamp_min(1.0)

    def pool(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.float() * weights.unsqueeze(-1)).sum(dim=1) / counts

    return pool


class BlockCapture:
    """What :func:`capture_blocks` yields: run the model with :meth:`run` to get the features."""

    def __init__(self, blocks: Sequence[int]) -> None:
        self.blocks = tuple(blocks)
        self.features: dict[int, torch.Tensor] = {}
        #: What the last ``forward`` returned; ``None`` when the pass was stopped early.
        self.output: object = None

    def run(self, forward: Callable[[], object]) -> dict[int, torch.Tensor]:
        """Call ``forward`` (one model pass) and return ``{block: pooled [B, D]}``.

        The pass's own result is left in :attr:`output` (``None`` if it stopped early).
        """
        self.features = {}
        self.output = None
        try:
            self.output = forward()
        except _StopForward:
            pass
        missing = [b for b in self.blocks if b not in self.features]
        if missing:
            raise BackboneError(f"forward pass ended without reaching block(s) {missing}")
        return dict(self.features)


@contextmanager
def capture_blocks(
    blocks: Sequence[nn.Module], wanted: Sequence[int], pool: Pool, *, stop: bool = True,
    select: Select = first_output,
) -> Iterator[BlockCapture]:
    """Hook the output of blocks ``wanted`` (1-based: block b is ``blocks[b - 1]``).

    Args:
        blocks: the model's blocks in forward order (an ``nn.ModuleList`` or any sequence).
        wanted: 1-based block numbers; the pass stops after the deepest one.
        pool: pools one block's tokens; hooks live for one pass, so a batch-dependent pool
            (a padding mask) is simply passed anew for each batch.
        stop: stop the pass after the deepest wanted block (default). ``False`` runs the whole
            model and keeps its result in :attr:`BlockCapture.output`.
        select: picks the tokens ``[B, N, D]`` from a block's output (default
            :func:`first_output`; :func:`joint_image_tokens` for SD3/Flux blocks).

    Yields:
        A :class:`BlockCapture`; call its ``run`` with the forward pass.
    """
    wanted = sorted(set(wanted))
    if not wanted or wanted[0] < 1 or wanted[-1] > len(blocks):
        raise BackboneError(f"blocks {list(wanted)} outside 1..{len(blocks)}")
    capture = BlockCapture(wanted)
    deepest = wanted[-1]

    def make_hook(b: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            capture.features[b] = pool(select(output))
            if stop and b == deepest:
                raise _StopForward

        return hook

    handles = [blocks[b - 1].register_forward_hook(make_hook(b)) for b in wanted]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()

