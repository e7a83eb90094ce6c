from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.backbones._base import seeded_normal
from difffeat_tune.backbones.sd import FAMILY, load_sd
from tests.backbones.tiny_models import TinyModels
from tests.backbones.tiny_parts import ddpm_alpha_bar, spy_from_pretrained
from tests.conftest import make_split


@pytest.fixture(scope="module")
def folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("sd")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone("sd")


def test_blocks_are_down_mid_up_stages_with_their_own_widths(backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.block_names() == {1: "down_blocks.0", 2: "down_blocks.1", 3: "mid_block",
                                      4: "up_blocks.0", 5: "up_blocks.1"}
    assert backbone.block_widths() == {1: 8, 2: 16, 3: 16, 4: 16, 5: 8} and backbone.width == 16
    feats = backbone.features(backbone.encode(make_split("train", 2), range(2)), [100], [1, 2, 3, 4, 5])
    assert {b: v.shape[1] for b, v in feats[100].items()} == backbone.block_widths()


def test_hooked_features_equal_a_manual_forward(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 3), range(3))
    feats = backbone.features(batch, [25, 600], [1, 3, 4])
    # Independent reference: CLIP states of the empty prompt padded to 77 tokens, DDPM noising with
    # the scaled-linear schedule, then the U-Net's modules called in order (skips kept by hand).
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tokenizer("", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    unet = backbone.denoiser
    x0 = batch.tensors["latents"]
    with torch.inference_mode():
        context = encoder(ids)[0].expand(3, -1, -1)
        for t in (25, 600):
            abar = ddpm_alpha_bar(t, scaled_linear=True)
            sample = abar**0.5 * x0 + (1 - abar) ** 0.5 * seeded_normal(batch.ids, t, x0.shape[1:], 0, x0.device)
            emb = unet.time_embedding(unet.time_proj(torch.full((3,), t)))
            sample = unet.conv_in(sample)
            skips: tuple[torch.Tensor, ...] = (sample,)
            manual = {}
            for block in unet.down_blocks:
                extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
                sample, res = block(hidden_states=sample, temb=emb, **extra)
                skips += res
                manual[len(manual) + 1] = sample
            sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
            manual[3] = sample
            up = unet.up_blocks[0]
            sample = up(hidden_states=sample, temb=emb, res_hidden_states_tuple=skips[-len(up.resnets):])
            manual[4] = sample
            for b in (1, 3, 4):
                torch.testing.assert_close(feats[t][b], manual[b].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_conditioning_is_cached_and_the_text_encoder_not_loaded_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    loads = spy_from_pretrained(monkeypatch, CLIPTextModel)
    first = load_sd(str(folder), device="cpu")
    second = load_sd(str(folder), device="cpu")
    assert len(loads) == 1
    torch.testing.assert_close(second.conditioning["prompt_embeds"], first.conditioning["prompt_embeds"])
    assert first.conditioning["prompt_embeds"].shape == (1, 77, 16)


def test_family_documents_the_stages() -> None:
    assert FAMILY.name == "sd" and "widths differ per block" in FAMILY.blocks


def test_shipped_space_fits_the_stages_of_sd_1_and_2() -> None:
    from difffeat_tune.space import load_space

    space = load_space("sd")
    space.check_blocks("image", 9, "Stable Diffusion 1.x/2.x (4 down + mid + 4 up stages)")
    assert space.axes("image").b == (4, 5, 6, 7, 8)


def test_reads_the_released_layout_vocab_merges_and_an_unused_safety_checker(folder: Path, tmp_path: Path) -> None:
    # SD's hub folders hold tokenizer/vocab.json + merges.txt and list a safety checker and a
    # feature extractor in model_index.json; neither is downloaded nor loaded here.
    import json
    import shutil

    released = tmp_path / "released"
    shutil.copytree(folder, released)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    shutil.rmtree(released / "tokenizer")
    (released / "tokenizer").mkdir()
    (released / "tokenizer" / "vocab.json").write_text(json.dumps(tokenizer.get_vocab()))
    (released / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    (released / "tokenizer" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))
    index = json.loads((released / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (released / "model_index.json").write_text(json.dumps(index))
    loaded = load_sd(str(released), device="cpu")
    reference = load_sd(str(folder), device="cpu")
    torch.testing.assert_close(loaded.conditioning["prompt_embeds"], reference.conditioning["prompt_embeds"])


def test_extraction_stores_each_stage_at_its_own_width(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune.data._base import Dataset
    from difffeat_tune.extract import extract
    from difffeat_tune.store import FeatureStore

    dataset = Dataset("toy", ("a", "b", "c"), "multilabel", {"train": make_split("train", 5)})
    report = extract(dataset, backbone, FeatureStore(tmp_path / "features"), [10, 100], [1, 3, 5], batch_size=2,
                     dtype="float32")
    extraction = FeatureStore(tmp_path / "features").view("toy").extraction("image")
    direct = backbone.features(backbone.encode(dataset.split("train"), range(5)), [100], [1, 3, 5])[100]
    for b in (1, 3, 5):
        stored = extraction.load(100, b, "train")
        assert stored.values.shape == (5, backbone.block_widths()[b])
        torch.testing.assert_close(stored.values, direct[b], rtol=1e-4, atol=1e-5)
    assert report.folder
