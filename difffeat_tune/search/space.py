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

The same space converts to a Ray Tune ``param_space`` (``tune.choice`` over each axis) and to
the grids of Optuna's GridSampler.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from difffeat_tune._errors import ConfigError
from difffeat_tune.config import (
    DEFAULT_D_ALG, FUSION_METHODS, P_FUSION, P_IMAGE_B, P_IMAGE_T, P_MODALITY, P_TEXT_B, P_TEXT_T, TrialConfig,
)

#: The space used when none is named: the embedded data set with the tiny backbones.
DEFAULT_SPACE = "embedded"
#: Diffusion timesteps are integers in [0, T) with T = 1000 for both backbones.
NUM_TIMESTEPS = 1000
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
    """A declared search space (see the module docstring for the file format)."""

    name: str
    image: Axes
    text: Axes
    fusion_methods: tuple[str, ...]
    d_alg: int = DEFAULT_D_ALG
    probe: Mapping[str, float | int] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def axes(self, modality: str) -> Axes:
        return self.image if modality == "image" else self.text

    def unimodal_configs(self, modality: str) -> list[TrialConfig]:
        """Every (t, b) of one modality as a trial configuration, in grid order."""
        return [TrialConfig(modality=modality, **{modality: tb}, d_alg=self.d_alg)  # type: ignore[arg-type]
                for tb in self.axes(modality).points()]

    def fusion_configs(self, methods: Sequence[str] | None = None) -> list[TrialConfig]:
        """The full fusion grid: every image (t, b) x text (t, b) x method."""
        return [TrialConfig("fusion", image=i, text=t, fusion=m, d_alg=self.d_alg)
                for m in (methods or self.fusion_methods) for i in self.image.points() for t in self.text.points()]

    def fusion_grid(self, methods: Sequence[str] | None = None) -> dict[str, list[object]]:
        """The fusion grid as Optuna GridSampler axes."""
        return {P_MODALITY: ["fusion"], P_IMAGE_T: list(self.image.t), P_IMAGE_B: list(self.image.b),
                P_TEXT_T: list(self.text.t), P_TEXT_B: list(self.text.b),
                P_FUSION: list(methods or self.fusion_methods)}

    def to_tune(self) -> dict[str, object]:
        """A Ray Tune ``param_space``: ``tune.choice`` over every axis (conditional use by modality)."""
        from ray import tune  # Ray is heavy to import; only the Ray engine needs it

        return {
            P_MODALITY: tune.choice(["image", "text", "fusion"]),
            P_IMAGE_T: tune.choice(list(self.image.t)), P_IMAGE_B: tune.choice(list(self.image.b)),
            P_TEXT_T: tune.choice(list(self.text.t)), P_TEXT_B: tune.choice(list(self.text.b)),
            P_FUSION: tune.choice(list(self.fusion_methods)),
        }

    def check_blocks(self, modality: str, num_blocks: int, where: str) -> None:
        """Raise :class:`ConfigError` if an axis asks for a block the backbone does not have."""
        bad = [b for b in self.axes(modality).b if b > num_blocks]
        if bad:
            raise ConfigError(f"space {self.source or self.name}: {modality} blocks {bad} exceed the {num_blocks} "
                              f"blocks of {where}", f"use blocks from 1 to {num_blocks}")


def available_spaces() -> list[str]:
    """Names of the spaces shipped in ``searchspaces/``."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files("difffeat_tune.searchspaces").iterdir()
                  if p.name.endswith(".toml"))


def load_space(name_or_path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """Load a shipped space by name or a TOML file by path, validating every field.

    Raises:
        ConfigError: naming the file and the key for an unknown section or axis, an empty axis, a
            value of the wrong type, a duplicate, a timestep outside [0, 1000), a block below 1, or
            an unknown fusion method.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"search space file {path} does not exist")
        text, source, name = path.read_text(), str(path), path.stem
    else:
        entry = resources.files("difffeat_tune.searchspaces").joinpath(f"{name_or_path}.toml")
        if not entry.is_file():
            raise ConfigError(f"unknown search space {str(name_or_path)!r}",
                              f"shipped spaces: {', '.join(available_spaces())}; or give a path to a .toml file")
        text, source, name = entry.read_text(), f"searchspaces/{name_or_path}.toml", str(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"search space {source} is not valid TOML: {exc}") from exc
    return _parse(raw, name=name, source=source)


def _parse(raw: Mapping[str, object], *, name: str, source: str) -> SearchSpace:
    _no_unknown(raw, _SECTIONS, source, "")
    for required in ("image", "text", "fusion"):
        if not isinstance(raw.get(required), dict):
            raise ConfigError(f"search space {source}: missing section [{required}]")
    image = _axes(raw["image"], source, "image")  # type: ignore[arg-type]
    text = _axes(raw["text"], source, "text")  # type: ignore[arg-type]
    fusion = raw["fusion"]
    assert isinstance(fusion, dict)
    _no_unknown(fusion, _FUSION_KEYS, source, "fusion")
    methods = fusion.get("methods", list(FUSION_METHODS))
    if not isinstance(methods, list) or not methods:
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
    return SearchSpace(name=name, image=image, text=text, fusion_methods=tuple(methods), d_alg=d_alg,
                       probe=dict(probe), description=str(description), source=source)


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
