"""Every public name resolves to the object its module defines (the package imports names on first use)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["difffeat_tune", "difffeat_tune.search"])
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        defined_in = getattr(value, "__module__", None)
        assert value is not None and (defined_in is None or defined_in.startswith("difffeat_tune")), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    import difffeat_tune

    with pytest.raises(AttributeError, match="nope"):
        difffeat_tune.nope  # noqa: B018
