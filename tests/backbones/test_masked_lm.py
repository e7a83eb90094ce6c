from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones.masked_lm import FAMILY, MaskedDiffusionBackbone, load_masked_lm
from tests.backbones.hf_tiny import masked_mean, save_tokenizer
from tests.backbones.tiny_models import TinyModels
from tests.backbones.tiny_parts import count_calls
from tests.conftest import make_split

# A checkpoint's own model code, as MDLM and LLaDA folders ship it (modeling_*.py + config.json
# with auto_map). TinyMDLM mirrors MDLM's interface: forward(input_ids, timesteps), layers in
# backbone.blocks returning a tensor, no attention mask. TinyLLaDA mirrors LLaDA's: only AutoModel
# in auto_map, mask_token_id in config.json, layers in model.transformer.blocks returning
# (hidden, cache), forward(input_ids, attention_mask).
MODELING = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyDiffusionConfig(PretrainedConfig):
    model_type = "tiny_diffusion_lm"

    def __init__(self, vocab_size=32, hidden_dim=32, n_blocks=4, n_heads=2, model_length=48,
                 time_conditioning=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.model_length = model_length
        self.time_conditioning = time_conditioning


class Block(nn.Module):
    def __init__(self, dim, heads, returns_tuple):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.modulation = nn.Linear(dim, dim)
        self.returns_tuple = returns_tuple

    def forward(self, x, c, pad=None):
        h = self.norm1(x) * (1 + self.modulation(c)[:, None])
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return (x, None) if self.returns_tuple else x


class Stack(nn.Module):
    def __init__(self, config, returns_tuple):
        super().__init__()
        dim = config.hidden_dim
        self.vocab_embed = nn.Embedding(config.vocab_size, dim)
        self.positions = nn.Embedding(config.model_length, dim)
        self.sigma_map = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(Block(dim, config.n_heads, returns_tuple) for _ in range(config.n_blocks))
        self.output_layer = nn.Linear(dim, config.vocab_size)
        self.time_conditioning = config.time_conditioning

    def forward(self, indices, sigma, pad=None, output_hidden_states=False):
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        x = self.vocab_embed(indices) + self.positions.weight[: indices.shape[1]]
        c = nn.functional.silu(self.sigma_map(sigma[:, None].float()))
        hidden = [x]
        for block in self.blocks:
            out = block(x, c, pad)
            x = out[0] if isinstance(out, tuple) else out
            hidden.append(x)
        return self.output_layer(x), hidden


class TinyMDLM(PreTrainedModel):
    config_class = TinyDiffusionConfig
    base_model_prefix = "mdlm"

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Stack(config, returns_tuple=False)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None):
        if timesteps is None:
            timesteps = torch.zeros(input_ids.shape[0], device=input_ids.device)
        logits, hidden = self.backbone(input_ids, timesteps, output_hidden_states=output_hidden_states)
        return MaskedLMOutput(logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None)


class TinyLLaDAModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config.hidden_dim
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, dim),
            "wpe": nn.Embedding(config.model_length, dim),
            "blocks": nn.ModuleList(Block(dim, config.n_heads, True) for _ in range(config.n_blocks)),
            "ff_out": nn.Linear(dim, config.vocab_size),
        })

    def forward(self, input_ids, pad=None, output_hidden_states=False):
        x = self.transformer.wte(input_ids) + self.transformer.wpe.weight[: input_ids.shape[1]]
        c = torch.zeros(input_ids.shape[0], x.shape[-1], device=x.device)
        hidden = [x]
        for block in self.transformer.blocks:
            x, _cache = block(x, c, pad)
            hidden.append(x)
        return self.transformer.ff_out(x), hidden


class TinyLLaDA(PreTrainedModel):
    config_class = TinyDiffusionConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyLLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None):
        pad = None if attention_mask is None else ~attention_mask.bool()
        logits, hidden = self.model(input_ids, pad, output_hidden_states=output_hidden_states)
        return MaskedLMOutput(logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None)
'''

LLADA_MASK_ID = 2  # "<|mdm_mask|>" in the llada-style tokenizer, declared only in config.json


def _custom_folder(folder: Path, model_class: str, auto_class: str, tokenizer_style: str | None,
                   **config: object) -> Path:
    """Write a folder the way a custom-code checkpoint ships: modeling file, config.json, weights."""
    folder.mkdir(parents=True)
    (folder / "modeling_tiny.py").write_text(MODELING)
    raw = {"model_type": "tiny_diffusion_lm",
           "auto_map": {"AutoConfig": "modeling_tiny.TinyDiffusionConfig", auto_class: f"modeling_tiny.{model_class}"},
           **config}
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    torch.manual_seed(0)
    factory = AutoModelForMaskedLM if auto_class == "AutoModelForMaskedLM" else AutoModel
    factory.from_config(loaded, trust_remote_code=True).save_pretrained(folder)
    if tokenizer_style is not None:
        save_tokenizer(folder, tokenizer_style)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("mlm")  # a BERT masked-LM checkpoint


@pytest.fixture(scope="module")
def mdlm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # GPT-2-style tokenizer without mask token: the model's vocabulary is the tokenizer's plus one.
    root = tmp_path_factory.mktemp("custom")
    return _custom_folder(root / "tiny-mdlm", "TinyMDLM", "AutoModelForMaskedLM", "gpt2", vocab_size=24)


@pytest.fixture(scope="module")
def llada_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("custom")
    return _custom_folder(root / "tiny-llada", "TinyLLaDA", "AutoModel", "llada", vocab_size=26,
                          mask_token_id=LLADA_MASK_ID)


@pytest.fixture(scope="module")
def bert(tiny_models: TinyModels) -> MaskedDiffusionBackbone:
    return tiny_models.backbone("mlm")  # type: ignore[return-value]  # loaded with token_length=16


def _reference(backbone: MaskedDiffusionBackbone, batch, t: int, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[no-untyped-def]
    """The library model's own hidden states at the backbone's masked tokens for t."""
    with torch.no_grad():
        out = backbone.model(input_ids=backbone.masked_tokens(batch, t), output_hidden_states=True,
                             return_dict=True, **inputs)
    return out.hidden_states


def test_bert_features_equal_the_models_hidden_states_at_the_same_masked_tokens(bert) -> None:  # type: ignore[no-untyped-def]
    batch = bert.encode(make_split("train", 5), range(5))
    feats = bert.features(batch, [0, 300, 700], [1, 3, 4])
    real = batch.tensors["real"]
    for t in (0, 300, 700):
        hidden = _reference(bert, batch, t, attention_mask=batch.tensors["attention"].long())
        for b in (1, 3, 4):
            torch.testing.assert_close(feats[t][b], masked_mean(hidden[b], real), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(feats[0][4], feats[700][4])
    assert bert.num_blocks == 4 and bert.width == 32 and bert.blocks_path == "bert.encoder.layer"


def test_masking_replaces_the_rounded_share_of_real_tokens_and_nothing_else(bert) -> None:  # type: ignore[no-untyped-def]
    batch = bert.encode(make_split("train", 6), range(6))
    tokens, real = batch.tensors["tokens"], batch.tensors["real"]
    assert torch.equal(bert.masked_tokens(batch, 0), tokens)
    for t in (100, 250, 500, 999):
        masked = bert.masked_tokens(batch, t)
        changed = masked != tokens
        assert not (changed & ~real).any()
        assert (masked[changed] == bert.mask_token_id).all()
        for i in range(6):
            n = int(real[i].sum())
            assert int(changed[i].sum()) == math.floor(t * n / 1000 + 0.5)
    assert bert.mask_token_id == 4  # the tokenizer's [MASK]


def test_masking_is_seeded_per_row_and_t_and_does_not_depend_on_the_batch(bert_folder: Path, bert) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 12)
    together = bert.encode(split, range(12))
    alone = bert.encode(split, [7])
    torch.testing.assert_close(bert.masked_tokens(alone, 500)[0], bert.masked_tokens(together, 500)[7])
    feats = bert.features(together, [500], [2])[500][2]
    torch.testing.assert_close(bert.features(alone, [500], [2])[500][2][0], feats[7], rtol=1e-4, atol=1e-5)
    # Another t, or another seed, masks other positions (over 12 rows of 5-7 tokens at ratio 1/2).
    assert not torch.equal(bert.masked_tokens(together, 500), bert.masked_tokens(together, 510))
    reseeded = load_masked_lm(str(bert_folder), device="cpu", token_length=16, noise_seed=1)
    assert not torch.equal(reseeded.masked_tokens(together, 500), bert.masked_tokens(together, 500))
    assert reseeded.settings() != bert.settings() and reseeded.fingerprint() == bert.fingerprint()


def test_custom_mdlm_code_loads_from_its_folder_and_gets_its_noise_level(mdlm_folder: Path) -> None:
    backbone = load_masked_lm(str(mdlm_folder), device="cpu", token_length=12)
    assert type(backbone.model).__name__ == "TinyMDLM" and backbone.blocks_path == "backbone.blocks"
    assert backbone.mask_token_id == len(backbone.tokenizer) == 23  # MDLM's extra last id
    assert backbone.takes_timesteps and not backbone.use_attention_mask
    assert backbone.pad_rule.startswith("end-of-text")
    batch = backbone.encode(make_split("val", 4), range(4))
    feats = backbone.features(batch, [0, 400], [2, 4])
    for t in (0, 400):
        sigma = torch.full((4,), -math.log(1 - t / 1000))
        hidden = _reference(backbone, batch, t, timesteps=sigma)
        for b in (2, 4):
            torch.testing.assert_close(feats[t][b], masked_mean(hidden[b], batch.tensors["real"]),
                                       rtol=1e-4, atol=1e-5)
    with count_calls(backbone.blocks) as counts:
        backbone.features(batch, [400], [3])
    assert counts == [1, 1, 1, 0]


def test_llada_style_code_loads_through_automodel_with_the_configured_mask_token(llada_folder: Path) -> None:
    backbone = FAMILY.load(str(llada_folder), LoadOptions(device="cpu", token_length=10, noise_seed=5))
    assert type(backbone.model).__name__ == "TinyLLaDA"
    assert backbone.blocks_path == "model.transformer.blocks"
    assert backbone.mask_token_id == LLADA_MASK_ID and backbone.tokenizer.mask_token_id is None
    assert backbone.use_attention_mask and not backbone.takes_timesteps
    assert backbone.settings()["noise_seed"] == 5 and backbone.token_length == 10
    batch = backbone.encode(make_split("val", 3), range(3))
    feats = backbone.features(batch, [900], [1, 4])
    hidden = _reference(backbone, batch, 900, attention_mask=batch.tensors["attention"].long())
    for b in (1, 4):
        torch.testing.assert_close(feats[900][b], masked_mean(hidden[b], batch.tensors["real"]), rtol=1e-4, atol=1e-5)


def test_a_missing_folder_names_the_mdlm_download_and_an_empty_one_config_json(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"does not exist[\s\S]*huggingface-cli download kuleshov-group/mdlm-owt"):
        load_masked_lm(str(tmp_path / "nowhere" / "mdlm"))
    with pytest.raises(BackboneError, match="config.json"):
        load_masked_lm(str(tmp_path))


def test_folder_without_tokenizer_asks_for_one(tmp_path: Path, mdlm_folder: Path) -> None:
    bare = tmp_path / "mdlm-no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "modeling_tiny.py"):
        (bare / name).write_bytes((mdlm_folder / name).read_bytes())
    with pytest.raises(BackboneError, match="tokenizer"):
        load_masked_lm(str(bare))
    backbone = load_masked_lm(str(bare), tokenizer=str(mdlm_folder), token_length=8, device="cpu")
    assert backbone.mask_token_id == 23


def test_checkpoint_code_needing_a_missing_package_says_so(tmp_path: Path, mdlm_folder: Path) -> None:
    broken = tmp_path / "mdlm-needs-flash"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((mdlm_folder / name).read_bytes())
    (broken / "modeling_tiny.py").write_text("import flash_attn_not_installed\n" + MODELING)
    with pytest.raises(BackboneError, match=r"not installed[\s\S]*flash_attn"):
        load_masked_lm(str(broken))


def test_token_length_beyond_the_models_positions_is_rejected(bert_folder: Path) -> None:
    with pytest.raises(ConfigError, match="exceeds the 48 positions"):
        load_masked_lm(str(bert_folder), token_length=64)
    assert load_masked_lm(str(bert_folder), device="cpu").token_length == 48  # default 64, capped


def test_masked_features_extract_into_the_feature_store_and_resume(mdlm_folder: Path, toy_dataset,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    from difffeat_tune.extract import extract
    from difffeat_tune.store import FeatureStore

    backbone = load_masked_lm(str(mdlm_folder), device="cpu", token_length=12)
    store = FeatureStore(tmp_path)
    report = extract(toy_dataset, backbone, store, [0, 300], [2, 4], dtype="float32", batch_size=7)
    assert report.parts_written == 4  # 2 splits x 2 timesteps
    val = toy_dataset.split("val")
    direct = backbone.features(backbone.encode(val, range(len(val))), [300], [4])[300][4]
    torch.testing.assert_close(store.view("toy").load("text", 300, 4, "val").values, direct, rtol=1e-4, atol=1e-5)
    assert extract(toy_dataset, backbone, store, [0, 300], [2, 4], dtype="float32").parts_written == 0
