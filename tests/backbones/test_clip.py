"""CLIP and SigLIP towers: tiny two-tower checkpoints saved with an image processor and a tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones.clip import (
    CLIP,
    CLIP_IMAGE_FAMILY,
    CLIP_TEXT_FAMILY,
    SIGLIP,
    SIGLIP_IMAGE_FAMILY,
    SIGLIP_TEXT_FAMILY,
    load_text_tower,
    load_vision_tower,
)
from tests.backbones.hf_tiny import masked_mean, save_tokenizer
from tests.backbones.tiny_parts import count_calls
from tests.conftest import make_split

TOWER = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
FAMILIES = {"clip": (CLIP_IMAGE_FAMILY, CLIP_TEXT_FAMILY), "siglip": (SIGLIP_IMAGE_FAMILY, SIGLIP_TEXT_FAMILY)}


def _build(folder: Path, kind: str) -> Path:
    torch.manual_seed(0)
    if kind == "clip":
        tokenizer = save_tokenizer(folder, "clip")
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        config = CLIPConfig(text_config={**TOWER, **ids, "vocab_size": len(tokenizer), "max_position_embeddings": 20},
                            vision_config={**TOWER, "image_size": 32, "patch_size": 8}, projection_dim=16)
        CLIPModel(config).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        tokenizer = save_tokenizer(folder, "t5")
        config = SiglipConfig(text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                                           "pad_token_id": tokenizer.pad_token_id},
                              vision_config={**TOWER, "image_size": 32, "patch_size": 8})
        SiglipModel(config).save_pretrained(folder)
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["clip", "siglip"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def folder(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp(kind), kind)


@pytest.fixture(scope="module")
def vision(kind: str, folder: Path):  # type: ignore[no-untyped-def]
    return FAMILIES[kind][0].load(str(folder), LoadOptions(device="cpu"))


@pytest.fixture(scope="module")
def text(kind: str, folder: Path):  # type: ignore[no-untyped-def]
    return FAMILIES[kind][1].load(str(folder), LoadOptions(device="cpu"))


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


def test_a_pass_stops_after_the_deepest_block(vision, text) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 2)
    for backbone in (vision, text):
        batch = backbone.encode(split, range(2))
        with count_calls(backbone.blocks) as counts:
            backbone.features(batch, [0], [2])
        assert counts == [1, 1, 0, 0]


@pytest.mark.parametrize("t", [10, 999])
def test_any_timestep_but_zero_says_t_is_fixed(vision, text, t) -> None:  # type: ignore[no-untyped-def]
    for backbone in (vision, text):
        with pytest.raises(BackboneError, match="t is fixed at 0"):
            backbone.validate([0, t], [1])


@pytest.mark.parametrize("block", [0, 5])
def test_a_wrong_block_is_a_clear_error(vision, text, block) -> None:  # type: ignore[no-untyped-def]
    for backbone in (vision, text):
        with pytest.raises(BackboneError, match="outside 1..4"):
            backbone.validate([0], [block])


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


def test_missing_checkpoint_or_processor_names_what_to_download(kind, folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    towers = CLIP if kind == "clip" else SIGLIP
    with pytest.raises(BackboneError, match=f"huggingface-cli download {towers.default_source} --local-dir DIR"):
        load_vision_tower(towers=towers)  # the default hub id, not in the (empty) offline cache
    with pytest.raises(BackboneError, match=r"does not exist[\s\S]*huggingface-cli download"):
        load_text_tower(str(tmp_path / "absent"), towers=towers)
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
