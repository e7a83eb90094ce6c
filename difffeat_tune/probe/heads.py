"""Probe heads: a linear probe on one feature and the paper's four fusion heads on two.

Every head is an ``nn.Module`` called as ``head(*inputs)`` and returning logits ``[B, n_classes]``;
``head.n_inputs`` says how many feature tensors it takes (1 for :class:`LinearProbe`, 2 for the
fusion heads, image first, text second). Every head ends in one linear classifier, ``classifier``,
applied to ``head.fuse(*inputs)``: the representation the classifier sees (the feature itself for
the linear probe, the fused vector for a fusion head; the paper's t-SNE figures plot it).

Cross attention on pooled features
----------------------------------
The features are pooled vectors, one per modality. Taken literally as one image token attending
to one text token, the softmax over a single key is identically 1 and attention returns the value
projection of the text: cross attention would collapse to linear addition. :class:`CrossAttention`
therefore expands each pooled vector into a short sequence of ``n_tokens`` *learned* tokens
(one linear map ``D -> n_tokens * d_alg`` reshaped to ``[n_tokens, d_alg]``, i.e. ``n_tokens``
different linear views of the feature). Splitting the raw vector into contiguous chunks was
rejected: a hidden state's channels have no order, so chunks would be arbitrary channel groups
sharing one projection. Image tokens are the queries, text tokens the keys and values;
single-head scaled dot-product attention with ``d_k = d_alg`` (the paper's choice); an output
projection; a residual connection adds the image query tokens back so image information is never
lost when attention looks elsewhere; the result is averaged over the query tokens and classified
by one linear layer. The attention weights depend on both inputs, so the head is a genuine
input-dependent (gated) mixture of text views, not a fixed linear map. With ``n_tokens=1`` the
head reduces exactly to linear addition (image projection + projected text value).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import DEFAULT_D_ALG, FUSION_METHODS, HEAD_TABLE, UNIMODAL_HEAD

#: Number of learned tokens each pooled feature is expanded into by :class:`CrossAttention`.
DEFAULT_CROSS_ATTENTION_TOKENS = 4
#: Epsilon of the l2 normalisation in :class:`SimpleConcat`.
L2_EPS = 1e-12


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class LinearProbe(nn.Module):
    """One linear layer on a single feature: ``logits = W x + b``.

    Args:
        in_dim: feature width.
        n_classes: number of outputs.
    """

    n_inputs = 1
    #: Trains stacked with others of its shape (``train_heads``): its layers are ``nn.Linear`` and
    #: its forward works on ``[K, batch, width]`` inputs.
    batchable = True

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        _check_positive(in_dim=in_dim, n_classes=n_classes)
        self.classifier = nn.Linear(in_dim, n_classes)

    @classmethod
    def from_widths(cls, widths: Sequence[int], n_classes: int, **_: int) -> LinearProbe:
        """The head for one feature of width ``widths[0]``."""
        return cls(widths[0], n_classes)

    def fuse(self, x: Tensor) -> Tensor:
        """The representation the classifier sees: the feature itself."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, n_classes]`` of features ``[B, in_dim]``."""
        return self.classifier(x)


class _FusionHead(nn.Module):
    """Common base: two inputs (image ``[B, Di]``, text ``[B, Dt]``)."""

    n_inputs = 2
    #: See :attr:`LinearProbe.batchable`; the linear fusion heads set it.
    batchable = False

    def __init__(self, image_dim: int, text_dim: int, n_classes: int) -> None:
        super().__init__()
        _check_positive(image_dim=image_dim, text_dim=text_dim, n_classes=n_classes)
        self.image_dim = image_dim
        self.text_dim = text_dim
        self.n_classes = n_classes

    @classmethod
    def from_widths(cls, widths: Sequence[int], n_classes: int, *, d_alg: int = DEFAULT_D_ALG,
                    n_tokens: int = DEFAULT_CROSS_ATTENTION_TOKENS) -> _FusionHead:
        """The head for an image feature of width ``widths[0]`` and a text feature of ``widths[1]``."""
        return cls(widths[0], widths[1], n_classes, **cls._options(d_alg=d_alg, n_tokens=n_tokens))

    @classmethod
    def _options(cls, *, d_alg: int, n_tokens: int) -> dict[str, int]:
        """The constructor options this head takes beyond the widths and classes."""
        return {"d_alg": d_alg}

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        """The fused representation ``[B, width]`` that the classifier reads."""
        raise NotImplementedError

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """Logits ``[B, n_classes]``."""
        return self.classifier(self.fuse(image, text))


class SimpleConcat(_FusionHead):
    """l2-normalise each feature, concatenate, linear: ``W [x/|x|; y/|y|] + b``."""

    batchable = True

    def __init__(self, image_dim: int, text_dim: int, n_classes: int) -> None:
        super().__init__(image_dim, text_dim, n_classes)
        self.classifier = nn.Linear(image_dim + text_dim, n_classes)

    @classmethod
    def _options(cls, *, d_alg: int, n_tokens: int) -> dict[str, int]:
        return {}

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        """``[x/|x|; y/|y|]``."""
        return torch.cat([F.normalize(image, dim=-1, eps=L2_EPS), F.normalize(text, dim=-1, eps=L2_EPS)], dim=-1)


class _Projected(_FusionHead):
    """Common base: each feature projected to ``d_alg`` (``P``, ``Q``), a linear classifier on their fusion."""

    batchable = True
    #: Width of the fused vector, in multiples of ``d_alg``.
    fused_widths = 1

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, d_alg: int = DEFAULT_D_ALG) -> None:
        super().__init__(image_dim, text_dim, n_classes)
        _check_positive(d_alg=d_alg)
        self.image_proj = nn.Linear(image_dim, d_alg)
        self.text_proj = nn.Linear(text_dim, d_alg)
        self.classifier = nn.Linear(self.fused_widths * d_alg, n_classes)


class LinearConcat(_Projected):
    """Project each feature to ``d_alg``, concatenate, linear: ``W [P x; Q y] + b``."""

    fused_widths = 2

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        """``[P x; Q y]``."""
        return torch.cat([self.image_proj(image), self.text_proj(text)], dim=-1)


class LinearAdd(_Projected):
    """Project each feature to ``d_alg``, add, linear: ``W (P x + Q y) + b`` (the paper's choice)."""

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        """``P x + Q y``."""
        return self.image_proj(image) + self.text_proj(text)


class CrossAttention(_FusionHead):
    """Image-queries-text cross attention over learned tokens, with an image residual.

    See the module docstring for the design. Shapes: image ``[B, Di]`` -> query tokens
    ``[B, k, d]``; text ``[B, Dt]`` -> key/value tokens ``[B, k, d]``; attention ``[B, k, k]``
    (softmax over the text tokens, scale ``1/sqrt(d)``); output ``mean_k(Q_img + O(attn V))``
    ``[B, d]`` -> linear classifier.

    Args:
        image_dim: image feature width Di.
        text_dim: text feature width Dt.
        n_classes: number of outputs.
        d_alg: token width, also the attention's d_k (single head).
        n_tokens: tokens per modality (k). 1 reduces the head to linear addition.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        n_classes: int,
        d_alg: int = DEFAULT_D_ALG,
        n_tokens: int = DEFAULT_CROSS_ATTENTION_TOKENS,
    ) -> None:
        super().__init__(image_dim, text_dim, n_classes)
        _check_positive(d_alg=d_alg, n_tokens=n_tokens)
        self.d_alg = d_alg
        self.n_tokens = n_tokens
        self.image_tokens = nn.Linear(image_dim, n_tokens * d_alg)
        self.text_tokens = nn.Linear(text_dim, n_tokens * d_alg)
        self.query = nn.Linear(d_alg, d_alg, bias=False)
        self.key = nn.Linear(d_alg, d_alg, bias=False)
        self.value = nn.Linear(d_alg, d_alg, bias=False)
        self.out = nn.Linear(d_alg, d_alg)
        self.classifier = nn.Linear(d_alg, n_classes)

    @classmethod
    def _options(cls, *, d_alg: int, n_tokens: int) -> dict[str, int]:
        return {"d_alg": d_alg, "n_tokens": n_tokens}

    def attention_weights(self, image: Tensor, text: Tensor) -> Tensor:
        """Attention probabilities ``[B, k_image, k_text]`` (for inspection and tests)."""
        q_tokens, kv_tokens = self._tokens(image, text)
        scores = self.query(q_tokens) @ self.key(kv_tokens).transpose(-2, -1) / math.sqrt(self.d_alg)
        return scores.softmax(dim=-1)

    def _tokens(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        batch = image.shape[0]
        q_tokens = self.image_tokens(image).view(batch, self.n_tokens, self.d_alg)
        kv_tokens = self.text_tokens(text).view(batch, self.n_tokens, self.d_alg)
        return q_tokens, kv_tokens

    def fuse(self, image: Tensor, text: Tensor) -> Tensor:
        """``mean_k(Q_img + O(attn V))`` ``[B, d_alg]``."""
        q_tokens, kv_tokens = self._tokens(image, text)
        attended = F.scaled_dot_product_attention(self.query(q_tokens), self.key(kv_tokens), self.value(kv_tokens))
        return (q_tokens + self.out(attended)).mean(dim=1)


#: Every name :func:`build_head` accepts (the table :data:`~difffeat_tune.config.HEAD_TABLE`).
HEAD_KINDS: tuple[str, ...] = tuple(HEAD_TABLE)


def head_class(kind: str) -> type[LinearProbe] | type[_FusionHead]:
    """The class of head ``kind`` (:class:`ConfigError` listing the names otherwise)."""
    entry = HEAD_TABLE.get(kind)
    if entry is None:
        raise ConfigError(f"unknown head kind {kind!r}", f"valid names: {', '.join(HEAD_KINDS)}")
    module, _, name = entry.partition(":")
    found: type[LinearProbe] | type[_FusionHead] = getattr(importlib.import_module(module), name)
    return found


def build_head(
    kind: str,
    *,
    image_dim: int | None = None,
    text_dim: int | None = None,
    n_classes: int,
    d_alg: int = DEFAULT_D_ALG,
    in_dim: int | None = None,
    n_tokens: int = DEFAULT_CROSS_ATTENTION_TOKENS,
    seed: int | None = None,
) -> nn.Module:
    """Build a probe head by name (see :data:`~difffeat_tune.config.HEAD_TABLE`).

    Args:
        kind: ``"linear"`` (unimodal) or one of :data:`FUSION_METHODS`.
        image_dim: image feature width (fusion heads).
        text_dim: text feature width (fusion heads).
        n_classes: number of outputs.
        d_alg: shared fusion width (ignored by ``linear`` and ``simple_concat``).
        in_dim: feature width of the ``linear`` head.
        n_tokens: tokens per modality of ``cross_attention`` (ignored by the others).
        seed: if given, parameters are initialised from this seed without touching the global
            RNG, so the same seed builds the same head.

    Returns:
        The head (on CPU, float32); ``head.n_inputs`` is 1 or 2.

    Raises:
        ConfigError: unknown kind (the message lists the valid names) or a missing/invalid width.
    """
    cls = head_class(kind)
    if cls.n_inputs == 1:
        if in_dim is None:
            raise ConfigError(f"head {kind!r} needs in_dim (the feature width)")
        widths: tuple[int, ...] = (in_dim,)
    elif image_dim is None or text_dim is None:
        raise ConfigError(f"fusion head {kind!r} needs image_dim and text_dim")
    else:
        widths = (image_dim, text_dim)
    if seed is None:
        return cls.from_widths(widths, n_classes, d_alg=d_alg, n_tokens=n_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.from_widths(widths, n_classes, d_alg=d_alg, n_tokens=n_tokens)


__all__ = ["DEFAULT_CROSS_ATTENTION_TOKENS", "DEFAULT_D_ALG", "FUSION_METHODS", "HEAD_KINDS", "UNIMODAL_HEAD",
           "CrossAttention", "LinearAdd", "LinearConcat", "LinearProbe", "SimpleConcat", "build_head", "head_class"]
