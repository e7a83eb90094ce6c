"""A trial's configuration: which features, which head. One conversion to and from Optuna params."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from difffeat_tune._defaults import DEFAULT_FUSION
from difffeat_tune._errors import ConfigError

#: The probe heads by name -> ``"module:Class"`` (imported when built): the one table to extend
#: with a new head. "linear" is the unimodal probe; every other head is a fusion method, in the
#: paper's order, and every shipped search space searches all of them (their ``[fusion]`` tables
#: list no ``methods``). The contract of a fusion head's class (an ``nn.Module``; subclassing
#: ``difffeat_tune.probe.heads._FusionHead`` gives the first three and ``forward``):
#: ``n_inputs = 2``; ``batchable`` (True only if its layers are ``nn.Linear`` and its forward
#: works on ``[K, batch, width]`` inputs: it then trains stacked with ``train_heads``);
#: ``from_widths(widths, n_classes, *, d_alg, n_tokens)`` building it for an image feature of
#: width ``widths[0]`` and a text feature of ``widths[1]``; ``fuse(image, text)``, the fused
#: representation, read by a final ``nn.Linear`` ``classifier``; ``forward(image, text)``, the
#: logits ``classifier(fuse(image, text))``.
HEAD_TABLE: Mapping[str, str] = MappingProxyType({
    "linear": "difffeat_tune.probe.heads:LinearProbe",
    "simple_concat": "difffeat_tune.probe.heads:SimpleConcat",
    "linear_concat": "difffeat_tune.probe.heads:LinearConcat",
    "linear_add": "difffeat_tune.probe.heads:LinearAdd",
    "cross_attention": "difffeat_tune.probe.heads:CrossAttention",
})
#: Name of the unimodal head.
UNIMODAL_HEAD = "linear"
#: The fusion methods (heads on an image and a text feature); linear addition is the paper's choice.
FUSION_METHODS: tuple[str, ...] = tuple(name for name in HEAD_TABLE if name != UNIMODAL_HEAD)
#: Shared fusion width (the paper: 512 by default, 2048 for large label spaces).
DEFAULT_D_ALG = 512

TrialModality = Literal["image", "text", "fusion"]
TRIAL_MODALITIES: tuple[TrialModality, ...] = ("image", "text", "fusion")

__all__ = ["DEFAULT_D_ALG", "DEFAULT_FUSION", "FUSION_METHODS", "HEAD_TABLE", "TRIAL_MODALITIES", "TrialConfig",
           "UNIMODAL_HEAD",
           "TrialModality"]

#: Optuna parameter names (also the Ray Tune config keys).
P_MODALITY, P_IMAGE_T, P_IMAGE_B, P_TEXT_T, P_TEXT_B, P_FUSION = (
    "modality", "image_t", "image_b", "text_t", "text_b", "fusion")


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search: unimodal image or text features, or a fusion of both.

    Attributes:
        modality: "image", "text" or "fusion".
        image: the image feature's (t, b), for image and fusion trials.
        text: the text feature's (t, b), for text and fusion trials.
        fusion: the fusion method, for fusion trials.
        d_alg: the fusion heads' shared width.
    """

    modality: TrialModality
    image: tuple[int, int] | None = None
    text: tuple[int, int] | None = None
    fusion: str | None = None
    d_alg: int = DEFAULT_D_ALG

    def __post_init__(self) -> None:
        if self.modality not in TRIAL_MODALITIES:
            raise ConfigError(f"unknown modality {self.modality!r}", f"use one of {', '.join(TRIAL_MODALITIES)}")
        need_image = self.modality in ("image", "fusion")
        need_text = self.modality in ("text", "fusion")
        if need_image != (self.image is not None) or need_text != (self.text is not None):
            raise ConfigError(f"a {self.modality} trial needs image={need_image}, text={need_text}; got {self}")
        if (self.modality == "fusion") != (self.fusion is not None):
            raise ConfigError(f"fusion method must be set exactly for fusion trials; got {self}")
        if self.fusion is not None and self.fusion not in FUSION_METHODS:
            raise ConfigError(f"unknown fusion method {self.fusion!r}", f"use one of {', '.join(FUSION_METHODS)}")

    def to_params(self) -> dict[str, object]:
        """Optuna params / Tune config of this configuration (absent axes are left out)."""
        params: dict[str, object] = {P_MODALITY: self.modality}
        if self.image is not None:
            params[P_IMAGE_T], params[P_IMAGE_B] = self.image
        if self.text is not None:
            params[P_TEXT_T], params[P_TEXT_B] = self.text
        if self.fusion is not None:
            params[P_FUSION] = self.fusion
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, object], *, d_alg: int = DEFAULT_D_ALG) -> TrialConfig:
        """Inverse of :meth:`to_params`; a missing ``modality`` means fusion if both sides are present."""
        has_image = P_IMAGE_T in params and P_IMAGE_B in params
        has_text = P_TEXT_T in params and P_TEXT_B in params
        default = "fusion" if has_image and has_text else "image" if has_image else "text"
        modality = str(params.get(P_MODALITY, default))
        try:
            return cls(
                modality=modality,  # type: ignore[arg-type]
                image=(int(params[P_IMAGE_T]), int(params[P_IMAGE_B])) if modality != "text" else None,  # type: ignore[call-overload]
                text=(int(params[P_TEXT_T]), int(params[P_TEXT_B])) if modality != "image" else None,  # type: ignore[call-overload]
                fusion=str(params.get(P_FUSION, DEFAULT_FUSION)) if modality == "fusion" else None,
                d_alg=d_alg,
            )
        except KeyError as exc:
            raise ConfigError(f"params {dict(params)} lack {exc.args[0]!r} for a {modality} trial") from None

    def label(self) -> str:
        """Short human-readable form, e.g. ``image t=30 b=12 + text t=0 b=20 (linear_add)``."""
        parts = []
        if self.image is not None:
            parts.append(f"image t={self.image[0]} b={self.image[1]}")
        if self.text is not None:
            parts.append(f"text t={self.text[0]} b={self.text[1]}")
        tail = f" ({self.fusion})" if self.fusion else ""
        return " + ".join(parts) + tail
