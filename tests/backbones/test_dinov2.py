"""DINOv2 (with and without register tokens): tiny checkpoints saved with their image processor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones.dinov2 import FAMILY, load_dinov2
from tests.backbones.tiny_parts import count_calls
from tests.conftest import make_split

SIZE = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
REGISTERS = 2


@pytest.fixture(scope="module", params=["plain", "registers"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(f"dinov2-{request.param}")
    torch.manual_seed(0)
    if request.param == "plain":
        Dinov2Model(Dinov2Config(**SIZE)).save_pretrained(folder)
    else:
        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**SIZE, num_register_tokens=REGISTERS)).save_pretrained(folder)
    # DINOv2's processor: resize the shorter side, centre-crop (256 -> 224 for the released models).
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(folder: Path):  # type: ignore[no-untyped-def]
    return FAMILY.load(str(folder), LoadOptions(device="cpu"))


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


def test_a_pass_stops_after_the_deepest_block(backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 2), range(2))
    with count_calls(backbone.blocks) as counts:
        backbone.features(batch, [0], [1])
    assert counts == [1, 0, 0, 0]


@pytest.mark.parametrize(("timesteps", "blocks", "message"),
                         [([30], [2], "t is fixed at 0"), ([0], [0], "outside 1..4"), ([0], [5], "outside 1..4")])
def test_wrong_timestep_or_block_is_a_clear_error(backbone, timesteps, blocks, message) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 1), range(1))
    with pytest.raises(BackboneError, match=message):
        backbone.features(batch, timesteps, blocks)


def test_missing_checkpoint_names_what_to_download(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="huggingface-cli download facebook/dinov2-base --local-dir DIR"):
        load_dinov2()
    bare = tmp_path / "no-processor"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(BackboneError, match="preprocessor_config.json"):
        load_dinov2(str(bare), device="cpu")
