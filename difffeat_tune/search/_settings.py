"""One settings tree for a whole run, from the command line (or Python) down to the probe.

:class:`Settings` is a small tree of frozen dataclasses, built once (:meth:`Settings.create`),
validated once, and passed down whole::

    Settings
      data       DataSettings        which data set (name or manifest, --root)
      backbones  BackboneSettings    which image and text backbones, and their feature settings
      store      StoreSettings       the feature store, stored dtype, extraction batch, splits
      space      SearchSpace         the grids of (t, b) and the fusion methods
      probe      ObjectiveSettings   the training recipe (the space's [probe] merged in), protocol
      search     SearchOptions       sampler, pruner, workers, engine, storage and study
      device     str                 where backbones run and probes train

The space's ``[probe]`` table is merged into the recipe here, once, with explicit overrides (e.g.
``--epochs``) taking precedence; "all" fusion methods become the space's. Every command of the
CLI builds its settings with :meth:`Settings.create`, and the study records
:meth:`Settings.record`.

Example:
    >>> from difffeat_tune.settings import Settings
    >>> settings = Settings.create(space="embedded", epochs=10, sampler="grid")
    >>> settings.probe.recipe.epochs, settings.search.sampler
    (10, 'grid')
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from difffeat_tune._defaults import DEFAULT_DEVICE, DEFAULT_SPACE
from difffeat_tune._errors import ConfigError
from difffeat_tune.features import BackboneSettings, DataSettings, FeatureRequest, StoreSettings
from difffeat_tune.probe.objective import ObjectiveSettings
from difffeat_tune.probe.train import TrainRecipe
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.space import SearchSpace, load_space

#: ``fusion_methods`` value meaning every method of the space.
ALL_METHODS = "all"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs (see the module docstring)."""

    data: DataSettings = field(default_factory=DataSettings)
    backbones: BackboneSettings = field(default_factory=BackboneSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    space: SearchSpace = field(default_factory=lambda: load_space(DEFAULT_SPACE))
    probe: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    search: SearchOptions = field(default_factory=SearchOptions)
    device: str = DEFAULT_DEVICE

    def __post_init__(self) -> None:
        methods = self.search.fusion_methods
        if self.space.has_fusion:
            unknown = [m for m in methods if m not in self.space.fusion_methods]
            if unknown:
                raise ConfigError(f"fusion method(s) {', '.join(unknown)} are not in search space {self.space.label}",
                                  f"use some of {', '.join(self.space.fusion_methods)}, or 'all'")

    @classmethod
    def create(
        cls,
        *,
        space: str | Path | SearchSpace = DEFAULT_SPACE,
        data: DataSettings | None = None,
        backbones: BackboneSettings | None = None,
        store: StoreSettings | None = None,
        probe: ObjectiveSettings | None = None,
        search: SearchOptions | None = None,
        device: str = DEFAULT_DEVICE,
        fusion: str | tuple[str, ...] | None = None,
        **overrides: object,
    ) -> Settings:
        """Build and validate the settings of a run.

        Args:
            space: a shipped space's name, a TOML path, or a loaded space.
            data, backbones, store, probe, search: the parts (defaults where ``None``).
            device: where backbones run and probes train.
            fusion: fusion methods: a tuple, a comma-separated string, or ``"all"`` (the space's).
            **overrides: fields of :class:`~difffeat_tune.probe.train.TrainRecipe` (e.g.
                ``epochs=10``), of :class:`~difffeat_tune.probe.objective.ObjectiveSettings`
                (``protocol="paper"``) or of :class:`~difffeat_tune.search._options.SearchOptions`
                (``sampler="grid"``); ``None`` values are ignored. A recipe field given here
                wins over the space's ``[probe]`` table, which wins over the recipe's default.

        Raises:
            ConfigError: naming the field and value at fault.
        """
        loaded = space if isinstance(space, SearchSpace) else load_space(space)
        given = {k: v for k, v in overrides.items() if v is not None}
        recipe_names = {f.name for f in fields(TrainRecipe)}
        probe_names = {f.name for f in fields(ObjectiveSettings)} - {"recipe"}
        search_names = {f.name for f in fields(SearchOptions)}
        unknown = sorted(set(given) - recipe_names - probe_names - search_names)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}",
                              f"settings: {', '.join(sorted(recipe_names | probe_names | search_names))}")
        probe = probe or ObjectiveSettings()
        recipe = replace(probe.recipe, **{**dict(loaded.probe), **{k: v for k, v in given.items()
                                                                   if k in recipe_names}})
        probe = replace(probe, recipe=recipe, **{k: v for k, v in given.items() if k in probe_names})
        search = replace(search or SearchOptions(), **{k: v for k, v in given.items() if k in search_names})
        if fusion is not None:
            search = replace(search, fusion_methods=_fusion_methods(fusion, loaded))
        return cls(data=data or DataSettings(), backbones=backbones or BackboneSettings(),
                   store=store or StoreSettings(), space=loaded, probe=probe, search=search, device=device)

    @property
    def features(self) -> FeatureRequest:
        """What to extract for this run: a search on Ray extracts its missing features on Ray too,
        unless the store's engine was chosen."""
        store = self.store
        if store.engine is None and self.search.engine == "ray":
            store = replace(store, engine="ray", ray_address=store.ray_address or self.search.ray_address)
        return FeatureRequest(data=self.data, backbones=self.backbones, store=store, space=self.space,
                              device=self.device)

    def with_space(self, space: SearchSpace) -> Settings:
        """The same settings on another space (e.g. restricted to a one-modality data set)."""
        methods = self.search.fusion_methods if space.has_fusion else ()
        return replace(self, space=space, search=replace(self.search, fusion_methods=methods))

    def record(self) -> dict[str, object]:
        """The settings a study records (JSON values): what decides its trials and their scores."""
        recipe = self.probe.recipe
        return {
            "sampler": self.search.sampler, "space": self.space.reference,
            "fusion_methods": list(self.search.fusion_methods), "neighbourhood": self.search.neighbourhood,
            "radius": self.search.radius, "pruner": self.search.pruner, "protocol": self.probe.protocol,
            "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
            "image_backbone": self.backbones.image if self.space.has("image") else None,
            "text_backbone": self.backbones.text if self.space.has("text") else None,
            "text_noising": self.backbones.options.text_noising if self.space.has("text") else None,
            "dataset": self.data.dataset,
        }


def _fusion_methods(fusion: str | tuple[str, ...], space: SearchSpace) -> tuple[str, ...]:
    if isinstance(fusion, str):
        if fusion.strip() == ALL_METHODS:
            return tuple(space.fusion_methods)
        return tuple(m.strip() for m in fusion.split(",") if m.strip())
    return tuple(fusion)

