"""BERT, RoBERTa (family ``bert``) and the T5 encoder (family ``t5``): tiny checkpoints saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaModel, T5Config, T5ForConditionalGeneration

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones.text_encoders import BERT_FAMILY, DEFAULT_BERT, T5_FAMILY, load_bert
from tests.backbones.hf_tiny import masked_mean, save_tokenizer
from tests.backbones.tiny_parts import count_calls
from tests.conftest import make_split

LAYERS = 4


def _build(folder: Path, kind: str) -> Path:
    tokenizer = save_tokenizer(folder, "t5" if kind == "t5" else "bert")
    torch.manual_seed(0)
    size = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if kind == "bert":  # a masked-LM checkpoint: the family reads its encoder
        BertForMaskedLM(BertConfig(**size, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=48)).save_pretrained(folder)
    elif kind == "roberta":
        RobertaModel(RobertaConfig(**size, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=50)).save_pretrained(folder)
    else:  # a full encoder-decoder checkpoint: the family reads its encoder
        T5ForConditionalGeneration(T5Config(**size, d_model=32, d_kv=16, d_ff=64, num_layers=LAYERS, num_heads=2,
                                            eos_token_id=tokenizer.eos_token_id,
                                            decoder_start_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["bert", "roberta", "t5"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def folder(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp(kind), kind)


@pytest.fixture(scope="module")
def backbone(kind: str, folder: Path):  # type: ignore[no-untyped-def]
    family = T5_FAMILY if kind == "t5" else BERT_FAMILY
    return family.load(str(folder), LoadOptions(device="cpu", token_length=16))


def test_features_equal_the_encoders_hidden_states_over_the_captions_tokens(kind, backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.num_blocks == LAYERS and backbone.width == 32 and backbone.token_length == 16
    assert backbone.blocks_path == ("encoder.block" if kind == "t5" else "encoder.layer")
    batch = backbone.encode(make_split("train", 4), range(4))
    # T5's hidden_states end with the final layer norm applied; block b is the b-th block's own output.
    blocks = [1, 2, 3] if kind == "t5" else [1, 2, 3, 4]
    feats = backbone.features(batch, [0], blocks)
    with torch.no_grad():
        hidden = backbone.model(input_ids=batch.tensors["tokens"], attention_mask=batch.tensors["attention"].long(),
                                output_hidden_states=True).hidden_states
    for b in blocks:
        torch.testing.assert_close(feats[0][b], masked_mean(hidden[b], batch.tensors["real"]), rtol=1e-4, atol=1e-5)


def test_special_tokens_and_padding_are_left_out_of_the_pool(kind, backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 2), range(2))
    tokens, real = batch.tensors["tokens"], batch.tensors["real"]
    specials = set(backbone.tokenizer.all_special_ids)
    assert all(int(tok) not in specials for tok in tokens[real])
    assert int(real[0].sum()) == 4  # "red circle number 0": red, circle, number, 0


def test_a_pass_stops_after_the_deepest_block(backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 2), range(2))
    with count_calls(backbone.blocks) as counts:
        backbone.features(batch, [0], [1, 3])
    assert counts == [1, 1, 1, 0]


def test_features_do_not_depend_on_the_batch(backbone) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 6)
    together = backbone.features(backbone.encode(split, range(6)), [0], [3])[0][3]
    alone = backbone.features(backbone.encode(split, [4]), [0], [3])[0][3]
    torch.testing.assert_close(alone[0], together[4], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("timesteps", "blocks", "message"),
                         [([10], [1], "t is fixed at 0"), ([0], [0], "outside 1..4"), ([0], [5], "outside 1..4")])
def test_wrong_timestep_or_block_is_a_clear_error(backbone, timesteps, blocks, message) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 1), range(1))
    with pytest.raises(BackboneError, match=message):
        backbone.features(batch, timesteps, blocks)


def test_missing_checkpoint_names_what_to_download(kind, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    family = T5_FAMILY if kind == "t5" else BERT_FAMILY
    with pytest.raises(BackboneError, match=f"huggingface-cli download {family.default_source} --local-dir DIR"):
        family.load(family.default_source or "", LoadOptions())
    with pytest.raises(BackboneError, match=r"does not exist[\s\S]*--local-dir"):
        family.load(str(tmp_path / "absent"), LoadOptions())


def test_a_checkpoint_missing_block_weights_is_refused(tmp_path: Path) -> None:
    folder = _build(tmp_path / "short", "bert")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = LAYERS + 2  # the file holds 4 layers, the config asks for 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=r"lacks weights its features need: encoder\.layer\.4\."):
        load_bert(str(folder), device="cpu")
    assert DEFAULT_BERT == BERT_FAMILY.default_source
