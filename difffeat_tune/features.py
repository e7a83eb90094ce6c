"""One call from names to a ready feature view: load data and backbones, extract what is missing.

Both ``difffeat-tune extract`` and the search commands go through :func:`ensure_features`, so a
search on the embedded default extracts (or reuses) its features automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from difffeat_tune.backbones._base import Backbone
from difffeat_tune.backbones._registry import TINY, load_image_backbone, load_text_backbone
from difffeat_tune.data import load_dataset
from difffeat_tune.data._base import Dataset
from difffeat_tune.extract import DEFAULT_BATCH_SIZE, ExtractReport, check_request, extract
from difffeat_tune.search.space import DEFAULT_SPACE, SearchSpace, load_space
from difffeat_tune.store import DEFAULT_DTYPE, Extraction, FeatureStore, FeatureView

logger = logging.getLogger(__name__)

#: Text token length when neither the user nor the data set says (the paper's main COCO runs).
DEFAULT_TOKEN_LENGTH = 60
#: Default feature-store folder, inside the local runs folder.
DEFAULT_FEATURES = Path("runs") / "features"


@dataclass(frozen=True)
class TextSettings:
    """Text-backbone settings that change the features (see ``load_plaid``).

    ``token_length=None`` takes the data set's ``recommended_token_length`` option, else
    :data:`DEFAULT_TOKEN_LENGTH` (the paper's COCO value).
    """

    token_length: int | None = None
    noising: str = "ddim"
    inversion_step: int | None = None
    noise_seed: int = 0

    def as_kwargs(self, dataset: Dataset | None = None) -> dict[str, object]:
        token_length = self.token_length
        if token_length is None:
            recommended = dataset.options.get("recommended_token_length") if dataset is not None else None
            token_length = int(recommended) if recommended is not None else DEFAULT_TOKEN_LENGTH  # type: ignore[call-overload]
        kwargs: dict[str, object] = {"token_length": token_length, "noising": self.noising,
                                     "noise_seed": self.noise_seed}
        if self.inversion_step is not None:
            kwargs["inversion_step"] = self.inversion_step
        return kwargs


@dataclass(frozen=True)
class FeatureRequest:
    """What to extract: a data set, backbones, the grid (from a space or explicit) and settings."""

    dataset: str = "shapes"
    dataset_options: dict[str, object] = field(default_factory=dict)
    features: Path = DEFAULT_FEATURES
    space: str = DEFAULT_SPACE
    modalities: tuple[str, ...] = ("image", "text")
    image_backbone: str = TINY
    vae: str | None = None
    text_backbone: str = TINY
    tokenizer: str | None = None
    image_timesteps: tuple[int, ...] | None = None
    image_blocks: tuple[int, ...] | None = None
    text_timesteps: tuple[int, ...] | None = None
    text_blocks: tuple[int, ...] | None = None
    splits: tuple[str, ...] | None = None
    device: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    dtype: str = DEFAULT_DTYPE
    image_noise_seed: int = 0
    text: TextSettings = field(default_factory=TextSettings)

    def grid(self, modality: str, space: SearchSpace) -> tuple[Sequence[int], Sequence[int]]:
        """Timesteps and blocks for ``modality``: explicit values, else the space's axes."""
        axes = space.axes(modality)
        if modality == "image":
            return self.image_timesteps or axes.t, self.image_blocks or axes.b
        return self.text_timesteps or axes.t, self.text_blocks or axes.b


@dataclass
class PreparedFeatures:
    """The outcome of :func:`ensure_features`."""

    view: FeatureView
    dataset: Dataset
    reports: list[ExtractReport]
    backbones: dict[str, str]


def load_backbones(request: FeatureRequest, dataset: Dataset | None = None) -> dict[str, Backbone]:
    """Load the request's backbones (fails fast on missing weights, before any extraction)."""
    out: dict[str, Backbone] = {}
    if "image" in request.modalities:
        out["image"] = load_image_backbone(request.image_backbone, device=request.device,
                                           noise_seed=request.image_noise_seed, vae=request.vae)
    if "text" in request.modalities:
        out["text"] = load_text_backbone(request.text_backbone, device=request.device, tokenizer=request.tokenizer,
                                         **request.text.as_kwargs(dataset))
    return out


def ensure_features(
    request: FeatureRequest,
    *,
    progress: Callable[[str, int], None] | None = None,
    on_total: Callable[[str, int], None] | None = None,
) -> PreparedFeatures:
    """Extract whatever the request needs and is not yet in the store; return a view on it.

    The whole request (data set, backbones, every timestep and block, every split's inputs) is
    validated before the first forward pass.

    Args:
        request: the request.
        progress: ``progress(modality, rows)`` after each batch.
        on_total: ``on_total(modality, rows)`` once per modality before its work starts.
    """
    space = load_space(request.space)
    dataset = load_dataset(request.dataset, **request.dataset_options)
    backbones = load_backbones(request, dataset)
    splits = request.splits or tuple(dataset.splits)
    for modality, backbone in backbones.items():
        check_request(dataset, backbone, *request.grid(modality, space), splits)
    store = FeatureStore(request.features)
    reports = []
    for modality, backbone in backbones.items():
        timesteps, blocks = request.grid(modality, space)
        report = extract(
            dataset, backbone, store, timesteps, blocks, splits=splits, batch_size=request.batch_size,
            dtype=request.dtype,
            progress=(lambda n, m=modality: progress(m, n)) if progress else None,
            on_total=(lambda n, m=modality: on_total(m, n)) if on_total else None,
        )
        reports.append(report)
    # Exactly the extractions of this request (others of the same data set may sit beside them).
    folders = {m: Path(r.folder) for m, r in zip(backbones, reports)}
    view = FeatureView(store.dataset_dir(dataset.name, dataset.fingerprint()),
                       image=Extraction(folders["image"]) if "image" in folders else None,
                       text=Extraction(folders["text"]) if "text" in folders else None)
    return PreparedFeatures(view=view, dataset=dataset, reports=reports,
                            backbones={m: f.name for m, f in folders.items()})
