"""The tiny checkpoints of every backbone family, built and loaded once per test session."""

from __future__ import annotations

import pytest

from tests.backbones.tiny_models import TinyModels


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Each family's tiny checkpoint folder and loaded backbone (see ``tiny_models.TINY_MODELS``)."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))
