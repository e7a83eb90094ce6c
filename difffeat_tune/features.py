"""From settings to a ready feature view: load the data and backbones, extract what is missing.

Both ``difffeat-tune extract`` and the search commands go through :func:`ensure_features`, so a
search on the embedded default extracts (or reuses) its features automatically. What to extract
is a :class:`FeatureRequest`: the data set, the backbones, the store and the space whose grids
are extracted (the extraction never looks at how the search will use them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from difffeat_tune._defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATASET,
    DEFAULT_DTYPE,
    DEFAULT_FEATURES,
    DEFAULT_SPACE,
    TINY,
)
from difffeat_tune._errors import ConfigError, check_int
from difffeat_tune._paths import local_folder, store_location
from difffeat_tune._store_fs import Location
from difffeat_tune.backbones._base import MODALITIES, Backbone
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._registry import load_backbone
from difffeat_tune.data import load_dataset
from difffeat_tune.data._base import Dataset
from difffeat_tune.extract import ExtractReport, ExtractSettings, check_request, extract
from difffeat_tune.space import SearchSpace, load_space
from difffeat_tune.store import DTYPES, Extraction, FeatureStore, FeatureView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """Which data set.

    Attributes:
        dataset: a built-in name (``shapes``, ``coco-enhanced``, ...) or a manifest path.
        root: the folder of a public data set's files (``--root``).
        options: further loader options (e.g. ``{"seed": 1}``).
    """

    dataset: str = DEFAULT_DATASET
    root: Path | None = None
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.root is not None:
            object.__setattr__(self, "root", local_folder(self.root, "DataSettings.root"))

    def load(self) -> Dataset:
        """Load the data set (a missing ``root`` is named as ``--root`` in the error)."""
        options = dict(self.options)
        if self.root is not None:
            options["root"] = self.root
        return load_dataset(self.dataset, **options)


@dataclass(frozen=True)
class BackboneSettings:
    """Which backbones, and every load setting that changes their features.

    Attributes:
        image: ``tiny``, ``family:source`` or a plain source (a DiT hub id or folder).
        text: ``tiny``, ``family:source`` or a plain source (a Plaid folder).
        options: the backbones' load settings (VAE, tokenizer, noise seed, token length, text
            noising, inversion step, resolution); their ``device`` is the run's, set when the
            backbones load (:meth:`load_options`).
    """

    image: str = TINY
    text: str = TINY
    options: LoadOptions = field(default_factory=LoadOptions)

    def name(self, modality: str) -> str:
        return self.image if modality == "image" else self.text

    def load_options(self, device: str | None, dataset: Dataset | None = None) -> LoadOptions:
        """The backbones' :class:`LoadOptions` on ``device``; the token length falls back on the data set's recommendation."""
        token_length = self.options.token_length
        if token_length is None and dataset is not None:
            recommended = dataset.options.get("recommended_token_length")
            token_length = int(recommended) if recommended is not None else None  # type: ignore[call-overload]
        return replace(self.options, device=device, token_length=token_length)


#: Where an extraction runs: in this process, or on Ray actors.
EXTRACT_ENGINES = ("local", "ray")


@dataclass(frozen=True)
class StoreSettings:
    """Where features go and how they are extracted.

    Attributes:
        features: the feature store's folder, or an object-store URI (``s3://bucket/prefix``...).
        dtype: stored dtype, ``float16`` or ``float32``.
        batch_size: rows per extraction batch.
        splits: the splits to extract (``None``: all).
        loader_workers: processes preparing the inputs (decode and crop, tokenise) ahead of the
            model (``None``: :func:`~difffeat_tune._loader.default_loader_workers` in this process,
            none inside a Ray actor, whose CPUs are its own; 0: in the main process). The features
            do not depend on it.
        engine: ``"local"`` (this process, one device) or ``"ray"`` (the extraction's units on Ray
            actors, one backbone and one GPU each; :func:`~difffeat_tune.extract_ray.extract_ray`);
            ``None``: the search's engine for a search's missing features, else local.
        actors: with ``"ray"``, the actors (``None``: one per GPU of the cluster, else one per CPU).
        ray_address: with ``"ray"``, the cluster to join (``None``: the running Ray, else a local one).
    """

    features: Location = DEFAULT_FEATURES
    dtype: str = DEFAULT_DTYPE
    batch_size: int = DEFAULT_BATCH_SIZE
    splits: tuple[str, ...] | None = None
    loader_workers: int | None = None
    engine: str | None = None
    actors: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", store_location(self.features, "StoreSettings.features"))
        if self.engine is not None and self.engine not in EXTRACT_ENGINES:
            raise ConfigError(f"StoreSettings.engine: unknown extraction engine {self.engine!r}",
                              f"use one of {', '.join(EXTRACT_ENGINES)}", field="StoreSettings.engine")
        check_int("StoreSettings.loader_workers", self.loader_workers, 0, optional=True)
        check_int("StoreSettings.actors", self.actors, 1, optional=True)
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown feature dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise ConfigError(f"StoreSettings.batch_size must be positive, got {self.batch_size}",
                              field="StoreSettings.batch_size")


@dataclass(frozen=True)
class FeatureRequest:
    """What to extract: a data set, backbones, a store, and the space whose grids to extract.

    Attributes:
        data: the data set.
        backbones: the backbones and their settings.
        store: the feature store and extraction settings.
        space: the grids (t, b) of each modality; a space with one modality extracts that one.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
    """

    data: DataSettings = field(default_factory=DataSettings)
    backbones: BackboneSettings = field(default_factory=BackboneSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    space: SearchSpace = field(default_factory=lambda: load_space(DEFAULT_SPACE))
    device: str = "auto"


@dataclass
class PreparedFeatures:
    """The outcome of :func:`ensure_features`.

    Attributes:
        view: the data set's features (exactly the extractions of the request).
        dataset: the loaded data set.
        space: the request's space, restricted to the data set's modalities.
        reports: one extraction report per modality.
        backbones: the extraction folder name per modality.
    """

    view: FeatureView
    dataset: Dataset
    space: SearchSpace
    reports: list[ExtractReport]
    backbones: dict[str, str]


def data_modalities(dataset: Dataset) -> tuple[str, ...]:
    """The modalities a data set has inputs for (images, captions)."""
    return tuple(m for m, present in zip(MODALITIES, (dataset.has_images, dataset.has_text)) if present)


def load_backbones(request: FeatureRequest, dataset: Dataset, space: SearchSpace) -> dict[str, Backbone]:
    """Load the backbones of the space's modalities (fails fast on missing weights, before any extraction)."""
    options = request.backbones.load_options(request.device, dataset)
    return {m: load_backbone(request.backbones.name(m), m, options) for m in space.modalities}  # type: ignore[arg-type]


def ensure_features(
    request: FeatureRequest,
    *,
    progress: Callable[[str, int], None] | None = None,
    on_total: Callable[[str, int], None] | None = None,
    verify: bool = False,
    dataset: Dataset | None = None,
) -> PreparedFeatures:
    """Extract whatever the request needs and is not yet in the store; return a view on it.

    The whole request (data set, backbones, every timestep and block, every split's inputs) is
    validated before the first forward pass. A data set with one modality extracts that one
    (the space is restricted to it).

    Args:
        request: the request.
        progress: ``progress(modality, rows)`` after each batch.
        on_total: ``on_total(modality, rows)`` once per modality before its work starts.
        verify: check the SHA-256 of every stored part; damaged parts are rebuilt, and intact
            ones found under a new modification time get it recorded (see
            :meth:`~difffeat_tune.store.Extraction.repair`).
        dataset: ``request.data`` already loaded (by a caller that read it first).
    """
    dataset = request.data.load() if dataset is None else dataset
    space = request.space.restricted_to(data_modalities(dataset))
    backbones = load_backbones(request, dataset, space)
    splits = request.store.splits or tuple(dataset.splits)
    for modality, backbone in backbones.items():
        axes = space.axes(modality)
        check_request(dataset, backbone, axes.t, axes.b, splits)
    store = FeatureStore(request.store.features)
    reports = []
    for modality, backbone in backbones.items():
        axes = space.axes(modality)
        callbacks = {"progress": (lambda n, m=modality: progress(m, n)) if progress else None,
                     "on_total": (lambda n, m=modality: on_total(m, n)) if on_total else None}
        if request.store.engine == "ray":
            from difffeat_tune.extract_ray import extract_ray

            options = request.backbones.load_options(request.device, dataset)
            reports.append(extract_ray(
                dataset, backbone, store, axes.t, axes.b,
                load=partial(load_backbone, request.backbones.name(modality), modality, options),
                settings=ExtractSettings(splits=splits, batch_size=request.store.batch_size,
                                         dtype=request.store.dtype, verify=verify),
                actors=request.store.actors, ray_address=request.store.ray_address,
                loader_workers=request.store.loader_workers, **callbacks))
        else:
            reports.append(extract(
                dataset, backbone, store, axes.t, axes.b, splits=splits, batch_size=request.store.batch_size,
                dtype=request.store.dtype, verify=verify, loader_workers=request.store.loader_workers,
                **callbacks))
    # Exactly the extractions of this request (others of the same data set may sit beside them).
    base = store.dataset_dir(dataset.name, dataset.fingerprint())
    folders = {m: base / m / store_location(r.folder, "extraction folder").name for m, r in zip(backbones, reports)}
    extractions = {m: Extraction(folder) for m, folder in folders.items()}
    if verify:  # checked and rebuilt above; record what was found intact under a new time
        for ext in extractions.values():
            ext.repair()
    view = FeatureView(base, image=extractions.get("image"), text=extractions.get("text"))
    return PreparedFeatures(view=view, dataset=dataset, space=space, reports=reports,
                            backbones={m: f.name for m, f in folders.items()})


def with_grid(space: SearchSpace, modality: str, timesteps: tuple[int, ...] | None,
              blocks: tuple[int, ...] | None) -> SearchSpace:
    """``space`` with explicit timesteps and/or blocks for ``modality`` (``extract --image-timesteps``...)."""
    if timesteps is None and blocks is None:
        return space
    if not space.has(modality) and (timesteps is None or blocks is None):
        raise ConfigError(f"the space has no {modality} grid: give both --{modality}-timesteps and --{modality}-blocks")
    return space.with_axes(modality, timesteps, blocks)
