"""DINOv2 (with and without register tokens): tiny checkpoints saved with their image processor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones.dinov2 import load_dinov2
from tests.backbones.tiny_models import TinyModels
from tests.conftest import make_split

@pytest.fixture(scope="module", params=["dinov2", "dinov2-registers"])
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def folder(name: str, tiny_models: TinyModels) -> Path:
    return tiny_models.folder(name)


@pytest.fixture(scope="module")
def backbone(name: str, tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone(name)


def test_features_equal_the_models_hidden_states_over_the_patch_tokens(backbone) -> None:  # type: ignore[no-untyped-def]
    registers = getattr(backbone.model.config, "num_register_tokens", 0)
    assert backbone.prefix_tokens == 1 + registers
    assert backbone.num_blocks == 4 and backbone.width == 32 and backbone.blocks_path == "encoder.layer"
    batch = backbone.encode(make_split("train", 3), range(3))
    assert batch.tensors["pixels"].shape == (3, 3, 28, 28)
    feats = backbone.features(batch, [0], [2, 4])
    with torch.no_grad():
        hidden = backbone.model(pixel_values=batch.tensors["pixels"], output_hidden_states=True).hidden_states
    assert hidden[1].shape[1] == 1 + registers + 4  # class token, registers, 2 x 2 patches
    for b in (2, 4):
        torch.testing.assert_close(feats[0][b], hidden[b][:, 1 + registers :].mean(dim=1), rtol=1e-4, atol=1e-5)


def test_class_token_pooling_reads_token_zero(folder: Path) -> None:
    cls = load_dinov2(str(folder), device="cpu", pooling="cls")
    batch = cls.encode(make_split("train", 2), range(2))
    with torch.no_grad():
        hidden = cls.model(pixel_values=batch.tensors["pixels"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(cls.features(batch, [0], [3])[0][3], hidden[3][:, 0], rtol=1e-4, atol=1e-5)


def test_a_folder_without_the_image_processor_names_its_file(folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "no-processor"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(BackboneError, match="preprocessor_config.json"):
        load_dinov2(str(bare), device="cpu")
