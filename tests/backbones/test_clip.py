"""CLIP and SigLIP towers: tiny two-tower checkpoints saved with an image processor and a tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune.backbones.clip import CLIP, SIGLIP, load_text_tower, load_vision_tower
from tests.backbones.hf_tiny import masked_mean
from tests.backbones.tiny_models import TinyModels
from tests.conftest import make_split

@pytest.fixture(scope="module", params=["clip", "siglip"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def folder(kind: str, tiny_models: TinyModels) -> Path:
    return tiny_models.folder(f"{kind}-image")


@pytest.fixture(scope="module")
def vision(kind: str, tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone(f"{kind}-image")


@pytest.fixture(scope="module")
def text(kind: str, tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone(f"{kind}-text")


def test_one_checkpoint_gives_the_vision_tower_to_images_and_the_text_tower_to_text(kind, vision, text) -> None:  # type: ignore[no-untyped-def]
    assert vision.modality == "image" and text.modality == "text"
    assert type(vision.model).__name__.endswith("VisionModel") and type(text.model).__name__.endswith("TextModel")
    assert vision.blocks_path == text.blocks_path == "encoder.layers"
    assert vision.num_blocks == text.num_blocks == 4 and vision.width == text.width == 32
    assert vision.fingerprint() != text.fingerprint()
    assert text.use_attention_mask == (kind == "clip")
    assert text.token_length == (20 if kind == "clip" else 16)  # the default, capped at the model's positions


def test_vision_features_equal_the_towers_hidden_states_over_the_patch_tokens(kind, folder, vision) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 3)
    batch = vision.encode(split, range(3))
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    expected_pixels = processor(images=[split.images.load(i) for i in range(3)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch.tensors["pixels"], expected_pixels)
    feats = vision.features(batch, [0], [1, 3])
    with torch.no_grad():
        hidden = vision.model(pixel_values=expected_pixels, output_hidden_states=True).hidden_states
    prefix = 1 if kind == "clip" else 0
    assert hidden[1].shape[1] == prefix + 16  # 32 px / patch 8 -> 4 x 4 patches
    for b in (1, 3):
        torch.testing.assert_close(feats[0][b], hidden[b][:, prefix:].mean(dim=1), rtol=1e-4, atol=1e-5)


def test_text_features_equal_the_towers_hidden_states_over_the_captions_tokens(text) -> None:  # type: ignore[no-untyped-def]
    batch = text.encode(make_split("train", 4), range(4))
    feats = text.features(batch, [0], [2, 4])
    inputs = {"input_ids": batch.tensors["tokens"]}
    if text.use_attention_mask:
        inputs["attention_mask"] = batch.tensors["attention"].long()
    with torch.no_grad():
        hidden = text.model(**inputs, output_hidden_states=True).hidden_states
    for b in (2, 4):
        torch.testing.assert_close(feats[0][b], masked_mean(hidden[b], batch.tensors["real"]), rtol=1e-4, atol=1e-5)


def test_class_token_pooling_is_a_recorded_choice(kind, folder, vision) -> None:  # type: ignore[no-untyped-def]
    towers = CLIP if kind == "clip" else SIGLIP
    if kind == "siglip":
        with pytest.raises(ConfigError, match="no class token"):
            load_vision_tower(str(folder), towers=towers, device="cpu", pooling="cls")
        return
    cls = load_vision_tower(str(folder), towers=towers, device="cpu", pooling="cls")
    batch = cls.encode(make_split("train", 2), range(2))
    with torch.no_grad():
        hidden = cls.model(pixel_values=batch.tensors["pixels"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(cls.features(batch, [0], [2])[0][2], hidden[2][:, 0], rtol=1e-4, atol=1e-5)
    assert cls.settings()["pooling"] == "cls" and vision.settings()["pooling"] == "mean-patch-tokens"


def test_a_folder_without_processor_or_tokenizer_names_the_missing_files(kind, folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    towers = CLIP if kind == "clip" else SIGLIP
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(BackboneError, match="preprocessor_config.json"):
        load_vision_tower(str(bare), towers=towers, device="cpu")
    with pytest.raises(BackboneError, match="tokenizer"):
        load_text_tower(str(bare), towers=towers, device="cpu")


def test_both_towers_extract_into_one_feature_store(vision, text, toy_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune.extract import extract
    from difffeat_tune.store import FeatureStore

    store = FeatureStore(tmp_path)
    for backbone in (vision, text):
        extract(toy_dataset, backbone, store, [0], [2, 4], dtype="float32", batch_size=16)
    view = store.view("toy")
    assert view.available("image", "val") == view.available("text", "val") == {0: {2, 4}}
    val = toy_dataset.split("val")
    for modality, backbone in (("image", vision), ("text", text)):
        direct = backbone.features(backbone.encode(val, range(len(val))), [0], [4])[0][4]
        torch.testing.assert_close(view.load(modality, 0, 4, "val").values, direct, rtol=1e-4, atol=1e-5)
    assert extract(toy_dataset, text, store, [0], [2, 4], dtype="float32").parts_written == 0
