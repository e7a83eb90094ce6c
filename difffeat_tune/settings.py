"""The settings of a run: one tree from the command line (or Python) down to the probe.

The tree is defined in :mod:`difffeat_tune.search._settings` (it composes the search's options
with the data, backbone, store and probe settings); this module is where users import it.

Example:
    >>> from difffeat_tune.settings import Settings
    >>> settings = Settings.create(space="embedded", epochs=10, sampler="grid")
    >>> settings.probe.recipe.epochs, settings.search.sampler
    (10, 'grid')
"""

from __future__ import annotations

from difffeat_tune.features import BackboneSettings, DataSettings, FeatureRequest, StoreSettings
from difffeat_tune.probe.objective import ObjectiveSettings
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search._settings import ALL_METHODS, Settings

__all__ = ["ALL_METHODS", "BackboneSettings", "DataSettings", "FeatureRequest", "ObjectiveSettings", "SearchOptions",
           "Settings", "StoreSettings"]
