from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import T5EncoderModel, T5Tokenizer

from difffeat_tune._errors import BackboneError
from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.backbones._base import seeded_normal
from difffeat_tune.backbones.pixart import FAMILY, load_pixart
from tests.backbones.tiny_models import TinyModels
from tests.backbones.tiny_parts import ddpm_alpha_bar, spy_from_pretrained
from tests.conftest import make_split

MAX_LENGTH = 120  # PixArtAlphaPipeline's default max_sequence_length


@pytest.fixture(scope="module")
def folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("pixart")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone("pixart")


def test_hooked_features_equal_a_manual_forward(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.num_blocks == 6 and backbone.width == 24 and backbone.resolution == 16
    batch = backbone.encode(make_split("train", 3), range(3))
    feats = backbone.features(batch, [20, 300], [2, 5])
    # Independent reference: the empty prompt through the saved T5 and tokenizer, DDPM noising from
    # the linear schedule, then the library's modules called in order.
    tokenizer = T5Tokenizer.from_pretrained(folder / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(folder / "text_encoder")
    empty = tokenizer("", padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    model = backbone.denoiser
    x0 = batch.tensors["latents"]
    with torch.inference_mode():
        embeds = encoder(empty.input_ids, attention_mask=empty.attention_mask)[0].expand(3, -1, -1)
        bias = ((1 - empty.attention_mask.float()) * -10000.0).unsqueeze(1).expand(3, -1, -1)
        for t in (20, 300):
            abar = ddpm_alpha_bar(t)
            xt = abar**0.5 * x0 + (1 - abar) ** 0.5 * seeded_normal(batch.ids, t, x0.shape[1:], 0, x0.device)
            steps = torch.full((3,), t)
            added = {"resolution": torch.tensor([[16.0, 16.0]]).expand(3, 2), "aspect_ratio": torch.ones(3, 1)}
            hidden = model.pos_embed(xt)
            temb, _ = model.adaln_single(steps, added, batch_size=3, hidden_dtype=hidden.dtype)
            context = model.caption_projection(embeds)
            for b, block in enumerate(model.transformer_blocks[:5], start=1):
                hidden = block(hidden, encoder_hidden_states=context, encoder_attention_mask=bias, timestep=temb)
                if b in (2, 5):
                    torch.testing.assert_close(feats[t][b], hidden.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_folder_without_the_text_encoder_names_it_and_what_to_download(folder: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    shutil.rmtree(partial / "text_encoder")
    with pytest.raises(BackboneError, match=r"(?s)lacks subfolder.s. text_encoder.*hf download PixArt-alpha/"):
        load_pixart(str(partial))


def test_other_pipeline_kind_is_refused(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(BackboneError, match="StableDiffusion3Pipeline pipeline, not one the pixart family reads"):
        load_pixart(str(other))


def test_conditioning_is_cached_and_the_text_encoder_not_loaded_again(
    folder: Path, backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    loads = spy_from_pretrained(monkeypatch, T5EncoderModel)
    first = load_pixart(str(folder), device="cpu")
    assert len(loads) == 1
    second = load_pixart(str(folder), device="cpu")
    assert len(loads) == 1  # the cache was hit: T5 was not loaded
    assert list((tmp_path / "cache" / "conditioning").glob("pixart-*.safetensors"))
    for name, value in first.conditioning.items():
        torch.testing.assert_close(second.conditioning[name], value)
    assert first.fingerprint() == second.fingerprint() == backbone.fingerprint()


def test_family_declares_how_to_load_and_what_t_and_b_mean(folder: Path) -> None:
    from difffeat_tune.backbones._family import LoadOptions

    assert FAMILY.name == "pixart" and FAMILY.modality == "image" and "DDPM" in FAMILY.timestep
    loaded = FAMILY.load(str(folder), LoadOptions(device="cpu", noise_seed=3))
    assert loaded.settings()["noise_seed"] == 3 and loaded.settings()["conditioning"] == "empty-prompt"


def test_shipped_space_fits_pixart_xl_2() -> None:
    from difffeat_tune.space import load_space

    load_space("pixart").check_blocks("image", 28, "PixArt-XL-2")


def test_reads_the_released_tokenizer_layout_spiece_model_only(folder: Path, tmp_path: Path) -> None:
    # PixArt's hub folders hold tokenizer/spiece.model and tokenizer_config.json, no tokenizer.json.
    import sentencepiece

    released = tmp_path / "released"
    shutil.copytree(folder, released)
    shutil.rmtree(released / "tokenizer")
    (released / "tokenizer").mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a red circle and a blue square", "two green stars on a mat"] * 20))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(released / "tokenizer" / "spiece"),
                                             vocab_size=24, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)
    (released / "tokenizer" / "spiece.vocab").unlink()
    (released / "tokenizer" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512}))
    loaded = load_pixart(str(released), device="cpu")
    assert loaded.conditioning["prompt_embeds"].shape == (1, MAX_LENGTH, 16)
    assert int(loaded.conditioning["attention_mask"].sum()) == 1  # "" is the end-of-sequence token alone
