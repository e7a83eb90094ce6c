"""BERT, RoBERTa (family ``bert``) and the T5 encoder (family ``t5``): tiny checkpoints saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones.text_encoders import BERT_FAMILY, DEFAULT_BERT, load_bert
from tests.backbones.hf_tiny import masked_mean
from tests.backbones.tiny_models import TEXT_LAYERS, TinyModels, build_bert
from tests.conftest import make_split

@pytest.fixture(scope="module", params=["bert", "roberta", "t5"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def backbone(kind: str, tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone(kind)  # loaded with token_length=16


def test_features_equal_the_encoders_hidden_states_over_the_captions_tokens(kind, backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.num_blocks == TEXT_LAYERS and backbone.width == 32 and backbone.token_length == 16
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


def test_a_checkpoint_missing_block_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "short"
    build_bert(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = TEXT_LAYERS + 2  # the file holds 4 layers, the config asks for 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=r"lacks weights its features need: encoder\.layer\.4\."):
        load_bert(str(folder), device="cpu")
    assert DEFAULT_BERT == BERT_FAMILY.default_source
