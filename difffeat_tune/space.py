"""Search spaces: grid axes per modality and fusion methods, declared in TOML under ``searchspaces/``.

A space file looks like::

    description = "..."
    [image]
    t = [10, 20, 30, 50, 100, 150]
    b = [8, 12, 16, 20, 24]
    [text]
    t = [0, 10, 20, 30]
    b = [8, 12, 16, 20, 24]
    [fusion]
    methods = ["simple_concat", "linear_concat", "linear_add", "cross_attention"]
    d_alg = 512
    [probe]            # optional: overrides of the training recipe for this space
    epochs = 40

A space for one modality (an image-only or text-only data set) omits the other modality's
section and ``[fusion]``; a two-modality space used on a one-modality data set is restricted to
the data set's modality (:meth:`SearchSpace.restricted_to`). The grids of a space are what
extraction computes and what both samplers search: the same space converts to the axes of
Optuna's GridSampler and to a Ray Tune ``param_space``.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from difffeat_tune._defaults import DEFAULT_SPACE
from difffeat_tune._errors import ConfigError
from difffeat_tune.backbones._base import NUM_TIMESTEPS
from difffeat_tune.config import (
    DEFAULT_D_ALG, FUSION_METHODS, P_FUSION, P_IMAGE_B, P_IMAGE_T, P_MODALITY, P_TEXT_B, P_TEXT_T,
    TrialConfig,
)

#: The modalities a space may search, in order.
UNIMODAL: tuple[str, str] = ("image", "text")
_SECTIONS = {"description", "image", "text", "fusion", "probe"}
_AXIS_KEYS = {"t", "b"}
_FUSION_KEYS = {"methods", "d_alg"}
_PROBE_KEYS = {"epochs", "batch_size", "lr", "weight_decay", "seed"}


@dataclass(frozen=True)
class Axes:
    """The grid of one modality: timesteps ``t`` and 1-based blocks ``b``."""

    t: tuple[int, ...]
    b: tuple[int, ...]

    def points(self) -> list[tuple[int, int]]:
        return list(itertools.product(self.t, self.b))


@dataclass(frozen=True)
class SearchSpace:
    """A declared search space (see the module docstring for the file format).

    Attributes:
        name: the space's name (file stem).
        image: the image grid, or ``None`` for a text-only space.
        text: the text grid, or ``None`` for an image-only space.
        fusion_methods: fusion methods (empty unless both modalities are present).
        d_alg: the fusion heads' shared width.
        probe: overrides of the training recipe (``[probe]``).
        description: free text.
        source: where the space was read from.
        file: the absolute path of the space's file when it was read (empty for a shipped space).
    """

    name: str
    image: Axes | None
    text: Axes | None
    fusion_methods: tuple[str, ...]
    d_alg: int = DEFAULT_D_ALG
    probe: Mapping[str, float | int] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    file: str = ""

    def __post_init__(self) -> None:
        if self.image is None and self.text is None:
            raise ConfigError(f"search space {self.label}: give an [image] or a [text] section, or both")
        if self.fusion_methods and not self.has_fusion:
            raise ConfigError(f"search space {self.label}: [fusion] needs both an [image] and a [text] section")

    @property
    def label(self) -> str:
        """How messages name the space (its file, else its name)."""
        return self.source or self.name

    @property
    def reference(self) -> str:
        """What a study records: :func:`load_space` loads the space again from it, from any folder.

        A shipped space's label (``searchspaces/<name>.toml``, which names the shipped file), or
        a space file's absolute path.
        """
        return self.file or self.label

    def is_recorded_as(self, recorded: str) -> bool:
        """Whether a study's recorded space (its :attr:`reference`, or the relative path that
        older versions recorded, resolved from this folder) names this space."""
        return recorded in (self.label, self.reference) or \
            (bool(self.file) and str(Path(recorded).absolute()) == self.file)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the space searches, image first."""
        return tuple(m for m in UNIMODAL if self.has(m))

    @property
    def has_fusion(self) -> bool:
        """Both modalities are present, so fusion pairs exist."""
        return self.image is not None and self.text is not None

    def has(self, modality: str) -> bool:
        return (self.image if modality == "image" else self.text if modality == "text" else None) is not None

    def axes(self, modality: str) -> Axes:
        """The grid of ``modality``; :class:`ConfigError` if the space has none."""
        axes = self.image if modality == "image" else self.text if modality == "text" else None
        if axes is None:
            raise ConfigError(f"search space {self.label} has no [{modality}] section",
                              f"add [{modality}] with t and b axes, or use a space for {modality} data")
        return axes

    def restricted_to(self, modalities: Sequence[str]) -> SearchSpace:
        """The space without the modalities not in ``modalities`` (and without fusion unless both stay).

        Raises:
            ConfigError: none of ``modalities`` is in the space.
        """
        keep = [m for m in self.modalities if m in modalities]
        if not keep:
            raise ConfigError(f"search space {self.label} searches {' and '.join(self.modalities)} features, "
                              f"but the data set has only {' and '.join(modalities) or 'no'} inputs",
                              f"use a space with a [{modalities[0] if modalities else 'image'}] section")
        if len(keep) == len(self.modalities):
            return self
        return replace(self, image=self.image if "image" in keep else None,
                       text=self.text if "text" in keep else None, fusion_methods=())

    def with_axes(self, modality: str, t: Sequence[int] | None = None, b: Sequence[int] | None = None) -> SearchSpace:
        """A copy whose ``modality`` grid has its ``t`` and/or ``b`` axis replaced (validated)."""
        if t is None and b is None:
            return self
        current = self.axes(modality) if self.has(modality) else None
        raw = {"t": list(t) if t is not None else list(current.t) if current else None,
               "b": list(b) if b is not None else list(current.b) if current else None}
        axes = _axes({k: v for k, v in raw.items() if v is not None}, self.label, modality)
        return replace(self, **{modality: axes})

    def unimodal_configs(self, modality: str) -> list[TrialConfig]:
        """Every (t, b) of one modality as a trial configuration, in grid order (none if absent)."""
        if not self.has(modality):
            return []
        return [TrialConfig(modality=modality, **{modality: tb}, d_alg=self.d_alg)  # type: ignore[arg-type]
                for tb in self.axes(modality).points()]

    def fusion_configs(self, methods: Sequence[str] | None = None) -> list[TrialConfig]:
        """The full fusion grid: every image (t, b) x text (t, b) x method (none for one modality)."""
        if not self.has_fusion:
            return []
        return [TrialConfig("fusion", image=i, text=t, fusion=m, d_alg=self.d_alg)
                for m in (methods or self.fusion_methods) for i in self.axes("image").points()
                for t in self.axes("text").points()]

    def grid_configs(self, methods: Sequence[str] | None = None) -> list[TrialConfig]:
        """What the full-grid baseline evaluates: the fusion grid, or the one modality's grid."""
        if self.has_fusion:
            return self.fusion_configs(methods)
        return self.unimodal_configs(self.modalities[0])

    def grid_axes(self, methods: Sequence[str] | None = None) -> dict[str, list[object]]:
        """:meth:`grid_configs` as Optuna GridSampler axes."""
        if not self.has_fusion:
            modality = self.modalities[0]
            axes = self.axes(modality)
            t_name, b_name = (P_IMAGE_T, P_IMAGE_B) if modality == "image" else (P_TEXT_T, P_TEXT_B)
            return {P_MODALITY: [modality], t_name: list(axes.t), b_name: list(axes.b)}
        image, text = self.axes("image"), self.axes("text")
        return {P_MODALITY: ["fusion"], P_IMAGE_T: list(image.t), P_IMAGE_B: list(image.b),
                P_TEXT_T: list(text.t), P_TEXT_B: list(text.b), P_FUSION: list(methods or self.fusion_methods)}

    def to_tune(self) -> dict[str, object]:
        """A Ray Tune ``param_space``: ``tune.choice`` over every axis (conditional use by modality)."""
        from ray import tune  # Ray is heavy to import; only the Ray engine needs it

        modalities = [*self.modalities, *(["fusion"] if self.has_fusion else [])]
        space: dict[str, object] = {P_MODALITY: tune.choice(modalities)}
        for modality, (t_name, b_name) in (("image", (P_IMAGE_T, P_IMAGE_B)), ("text", (P_TEXT_T, P_TEXT_B))):
            if self.has(modality):
                axes = self.axes(modality)
                space[t_name], space[b_name] = tune.choice(list(axes.t)), tune.choice(list(axes.b))
        if self.has_fusion:
            space[P_FUSION] = tune.choice(list(self.fusion_methods))
        return space

    def check_blocks(self, modality: str, num_blocks: int, where: str) -> None:
        """Raise :class:`ConfigError` if an axis asks for a block the backbone does not have."""
        bad = [b for b in self.axes(modality).b if b > num_blocks]
        if bad:
            raise ConfigError(f"space {self.label}: {modality} blocks {bad} exceed the {num_blocks} "
                              f"blocks of {where}", f"use blocks from 1 to {num_blocks}")


def available_spaces() -> list[str]:
    """Names of the spaces shipped in ``searchspaces/``."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files("difffeat_tune.searchspaces").iterdir()
                  if p.name.endswith(".toml"))


def _shipped_source(name: str) -> str:
    """The label of a shipped space (its file in the package's ``searchspaces`` folder)."""
    return f"searchspaces/{name}.toml"


def load_space(name_or_path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """Load a shipped space by name or a TOML file by path, validating every field.

    Raises:
        ConfigError: naming the file and the key for an unknown section or axis, an empty axis, a
            value of the wrong type, a duplicate, a timestep outside [0, 1000), a block below 1, or
            an unknown fusion method.
    """
    path = Path(name_or_path)
    shipped = path.stem if path.parts == Path(_shipped_source(path.stem)).parts else None
    if shipped and not path.is_file() and resources.files("difffeat_tune.searchspaces").joinpath(
            f"{shipped}.toml").is_file():
        path = Path(shipped)  # a shipped space's label, as a study records it: the shipped file
    if path.suffix == ".toml" or path.exists() or len(path.parts) > 1:  # a path, not a shipped name
        if not path.is_file():
            raise ConfigError(f"search space file {path} does not exist",
                              f"give a .toml file, or a shipped space: {', '.join(available_spaces())}")
        text, source, name, file = path.read_text(), str(path), path.stem, str(path.absolute())
    else:
        entry = resources.files("difffeat_tune.searchspaces").joinpath(f"{path}.toml")
        if not entry.is_file():
            raise ConfigError(f"unknown search space {str(path)!r}",
                              f"shipped spaces: {', '.join(available_spaces())}; or give a path to a .toml file")
        text, source, name, file = entry.read_text(), _shipped_source(str(path)), str(path), ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"search space {source} is not valid TOML: {exc}") from exc
    return replace(_parse(raw, name=name, source=source), file=file)


def _parse(raw: Mapping[str, object], *, name: str, source: str) -> SearchSpace:
    _no_unknown(raw, _SECTIONS, source, "")
    grids: dict[str, Axes | None] = {}
    for modality in UNIMODAL:
        section = raw.get(modality)
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"search space {source}: [{modality}] must be a table")
        grids[modality] = _axes(section, source, modality) if section is not None else None
    if grids["image"] is None and grids["text"] is None:
        raise ConfigError(f"search space {source}: missing sections [image] and [text]",
                          "give the grid of at least one modality")
    fusion = raw.get("fusion")
    both = grids["image"] is not None and grids["text"] is not None
    if fusion is None and both:
        raise ConfigError(f"search space {source}: missing section [fusion]",
                          "a space with [image] and [text] needs [fusion] (methods, d_alg)")
    if fusion is not None and not both:
        raise ConfigError(f"search space {source}: [fusion] needs both [image] and [text]",
                          "remove [fusion] from a one-modality space")
    if fusion is not None and not isinstance(fusion, dict):
        raise ConfigError(f"search space {source}: [fusion] must be a table")
    fusion = fusion or {}
    _no_unknown(fusion, _FUSION_KEYS, source, "fusion")
    methods = fusion.get("methods", list(FUSION_METHODS)) if both else []
    if both and (not isinstance(methods, list) or not methods):
        raise ConfigError(f"search space {source}: fusion.methods must be a non-empty list")
    for m in methods:
        if m not in FUSION_METHODS:
            raise ConfigError(f"search space {source}: unknown fusion method {m!r} in fusion.methods",
                              f"use {', '.join(FUSION_METHODS)}")
    d_alg = fusion.get("d_alg", DEFAULT_D_ALG)
    if not isinstance(d_alg, int) or isinstance(d_alg, bool) or d_alg < 1:
        raise ConfigError(f"search space {source}: fusion.d_alg must be a positive integer, got {d_alg!r}")
    probe = raw.get("probe", {})
    if not isinstance(probe, dict):
        raise ConfigError(f"search space {source}: [probe] must be a table")
    _no_unknown(probe, _PROBE_KEYS, source, "probe")
    description = raw.get("description", "")
    return SearchSpace(name=name, image=grids["image"], text=grids["text"], fusion_methods=tuple(methods),
                       d_alg=d_alg, probe=dict(probe), description=str(description), source=source)


def _no_unknown(table: Mapping[str, object], allowed: set[str], source: str, section: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        where = f"[{section}]" if section else "top level"
        raise ConfigError(f"search space {source}: unknown key(s) {', '.join(unknown)} in {where}",
                          f"allowed: {', '.join(sorted(allowed))}")


def _axes(table: Mapping[str, object], source: str, modality: str) -> Axes:
    _no_unknown(table, _AXIS_KEYS, source, modality)
    values: dict[str, tuple[int, ...]] = {}
    for key in ("t", "b"):
        axis = table.get(key)
        field_name = f"{modality}.{key}"
        if not isinstance(axis, list) or not axis:
            raise ConfigError(f"search space {source}: {field_name} must be a non-empty list of integers")
        if any(not isinstance(v, int) or isinstance(v, bool) for v in axis):
            raise ConfigError(f"search space {source}: {field_name} has a non-integer value in {axis}")
        if len(set(axis)) != len(axis):
            raise ConfigError(f"search space {source}: {field_name} has duplicates: {axis}")
        if key == "t" and any(not 0 <= v < NUM_TIMESTEPS for v in axis):
            raise ConfigError(f"search space {source}: {field_name} value outside [0, {NUM_TIMESTEPS}): {axis}")
        if key == "b" and any(v < 1 for v in axis):
            raise ConfigError(f"search space {source}: {field_name} blocks are numbered from 1: {axis}")
        values[key] = tuple(sorted(axis))
    return Axes(t=values["t"], b=values["b"])
