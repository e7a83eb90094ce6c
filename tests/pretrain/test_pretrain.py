"""Pretraining of the tiny backbones: a few steps lower each loss; the corpus never meets a data set split."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune.backbones.dit import load_dit
from difffeat_tune.backbones.plaid import load_plaid, train_tokenizer
from difffeat_tune.data.shapes import generate_corpus, load_shapes
from difffeat_tune.pretrain import (
    DiTRecipe, PlaidRecipe, TinyRecipe, VAERecipe, build_dit, build_plaid_modules, build_vae, dit_loss, file_digests,
    plaid_loss, train_dit, train_plaid, train_tiny_backbones, train_vae, vae_loss,
)
from difffeat_tune.pretrain._checkpoint import Checkpoints
from difffeat_tune.pretrain._dit import ddpm_scheduler
from difffeat_tune.pretrain._tiny import tokenize_padded
from difffeat_tune.pretrain._vae import to_unit_range


#: Tiny models gain nothing from intra-op threads, which thrash on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    return generate_corpus(48, seed=3)


def test_the_corpus_never_holds_a_scene_of_the_data_set(corpus) -> None:  # type: ignore[no-untyped-def]
    data = load_shapes(n_train=48, n_val=48, n_test=48, cache=False)
    corpus_images = {hashlib.sha256(p.tobytes()).hexdigest() for p in corpus.pixels}
    for split in data.splits.values():
        pixels = np.stack([np.asarray(split.images.load(i)) for i in range(len(split))])
        assert not corpus_images & {hashlib.sha256(p.tobytes()).hexdigest() for p in pixels}
        # Different scenes may share a short caption ("A heart."); a long one names one scene.
        shared = set(corpus.captions) & set(split.captions or ())
        assert all(len(caption.split()) <= 6 for caption in shared), shared
    # Same seed: the corpus's streams are not the data set's streams of that seed either.
    same_seed = generate_corpus(48, seed=0)
    assert not np.array_equal(same_seed.pixels, data.split("train").images._pixels)  # type: ignore[union-attr]


def test_corpus_chunks_are_independent_and_reproducible(corpus) -> None:  # type: ignore[no-untyped-def]
    again = generate_corpus(48, seed=3)
    assert np.array_equal(again.pixels, corpus.pixels) and again.captions == corpus.captions
    other = generate_corpus(48, seed=3, chunk=1)
    assert not np.array_equal(other.pixels, corpus.pixels)
    assert all(e.startswith(c.rstrip(".")) for c, e in zip(corpus.captions, corpus.enhanced_captions))
    assert any("In this photo, there are also some" in e for e in corpus.enhanced_captions)


def _fixed(fn, seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return float(fn())


def test_a_few_vae_steps_lower_its_loss(corpus) -> None:  # type: ignore[no-untyped-def]
    recipe = VAERecipe(block_out_channels=(8, 8), latent_channels=4, steps=40, batch_size=8, crop=32, lr=2e-3,
                       warmup=1)
    vae = build_vae(recipe, 64)
    images = to_unit_range(corpus.pixels[:8])[:, :, :32, :32]
    before = _fixed(lambda: vae_loss(vae, images, recipe.kl_weight)[0])
    train_vae(corpus.pixels, recipe, vae=vae)
    assert _fixed(lambda: vae_loss(vae, images, recipe.kl_weight)[0]) < 0.8 * before
    assert vae.config.scaling_factor > 0  # set from the latents' spread


def test_a_few_dit_steps_lower_its_loss() -> None:
    recipe = DiTRecipe(width=16, heads=2, layers=2, patch=2, steps=60, batch_size=16, lr=3e-3, warmup=1, ema=0.0)
    latents = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    model = build_dit(recipe, latent_size=4, latent_channels=4)
    scheduler = ddpm_scheduler()

    def loss() -> torch.Tensor:
        return dit_loss(model, latents[:32], scheduler, torch.Generator().manual_seed(7))

    before = _fixed(loss)
    trained = train_dit(latents, recipe, model=model)
    model.load_state_dict(trained.state_dict())
    assert _fixed(loss) < 0.9 * before


def test_dit_initialisation_is_adaln_zero() -> None:
    model = build_dit(DiTRecipe(width=16, heads=2, layers=2, patch=2), latent_size=4, latent_channels=4)
    for block in model.transformer_blocks:
        assert float(block.norm1.linear.weight.abs().sum()) == 0.0
    assert float(model.proj_out_2.weight.abs().sum()) == 0.0
    assert model.config.out_channels == 8  # learned-variance channels, as DiT-XL/2


def test_a_few_plaid_steps_lower_its_loss(corpus) -> None:  # type: ignore[no-untyped-def]
    texts = list(corpus.captions)
    tokenizer = train_tokenizer(texts, 300)
    tokens = tokenize_padded(tokenizer, texts, 16)
    recipe = PlaidRecipe(dim=16, n_blocks=2, n_heads=2, steps=60, batch_size=16, warmup=1, lr=3e-3)
    modules = build_plaid_modules(recipe, 300, torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:
        return plaid_loss(modules, tokens[:32], recipe, torch.Generator().manual_seed(5))[0]

    before = _fixed(loss)
    train_plaid(tokens, 300, recipe, modules=modules)
    modules.train(False)
    assert _fixed(loss) < 0.9 * before


def test_train_tiny_backbones_writes_folders_the_public_loaders_read(tmp_path: Path) -> None:
    base = TinyRecipe()
    recipe = replace(
        base, corpus_images=64, corpus_chunks=2, vocab_size=300, token_length=16,
        vae=replace(base.vae, block_out_channels=(8, 8, 8, 8), steps=2, batch_size=4, log_every=1),
        dit=replace(base.dit, width=16, heads=2, patch=4, steps=2, batch_size=8, log_every=1),
        plaid=replace(base.plaid, dim=16, n_heads=2, steps=2, batch_size=8, log_every=1),
    )
    seen: list[str] = []
    checkpoints = Checkpoints(tmp_path / "ckpt")
    record = train_tiny_backbones(tmp_path, recipe, log=lambda stage, step, values: seen.append(stage), workers=1,
                                  checkpoints=checkpoints)
    assert {"corpus", "vae", "dit", "plaid"} <= set(seen)
    assert all(torch.load(checkpoints.path(stage), weights_only=False)["step"] == 2 for stage in ("vae", "dit", "plaid"))
    dit = load_dit(tmp_path / "tiny-dit", device="cpu")
    assert dit.num_blocks == 28 and dit.latent_scale == pytest.approx(dit.vae.config.scaling_factor)
    plaid = load_plaid(tmp_path / "tiny-plaid", device="cpu", token_length=16)
    assert plaid.num_blocks == 24
    assert torch.load(tmp_path / "tiny-plaid" / "model.pt", weights_only=True)["blocks.0.attn_qkv.weight"].dtype \
        == torch.float16  # shipped small; computed in float32
    assert record["digests"]["tiny-plaid"] == file_digests(tmp_path / "tiny-plaid")  # type: ignore[index]


class _Stop(Exception):
    """Raised by a log callback: the process "dies" between two steps."""


def _interrupted(train, stop_at: int):  # type: ignore[no-untyped-def]
    """Run ``train(log)`` and stop it when step ``stop_at`` is logged (after ``stop_at - 1`` was saved)."""
    def log(step: int, values: dict[str, float]) -> None:
        if step == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        train(log)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_dit_training_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    recipe = DiTRecipe(width=16, heads=2, layers=2, patch=2, steps=6, batch_size=8, warmup=2, log_every=1)
    latents = torch.randn(32, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = train_dit(latents, recipe)
    checkpoints = Checkpoints(tmp_path, every_steps=1)
    _interrupted(lambda log: train_dit(latents, recipe, log=log, checkpoints=checkpoints), stop_at=4)
    assert torch.load(checkpoints.path("dit"), weights_only=False)["step"] == 3
    resumed = train_dit(latents, recipe, checkpoints=Checkpoints(tmp_path, resume=True, every_steps=1))
    assert _same(resumed.state_dict(), whole.state_dict())
    # A finished stage is not trained again; another recipe's checkpoint is refused.
    again = train_dit(latents, recipe, checkpoints=Checkpoints(tmp_path, resume=True))
    assert _same(again.state_dict(), whole.state_dict())
    with pytest.raises(ConfigError):
        train_dit(latents, replace(recipe, lr=1e-3), checkpoints=Checkpoints(tmp_path, resume=True))


def test_a_resumed_vae_training_equals_an_uninterrupted_one(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = VAERecipe(block_out_channels=(8, 8), latent_channels=4, steps=5, batch_size=4, crop=16, warmup=1,
                       log_every=1)
    whole = train_vae(corpus.pixels, recipe)
    _interrupted(lambda log: train_vae(corpus.pixels, recipe, log=log, checkpoints=Checkpoints(tmp_path, every_steps=1)),
                 stop_at=3)
    resumed = train_vae(corpus.pixels, recipe, checkpoints=Checkpoints(tmp_path, resume=True, every_steps=1))
    assert _same(resumed.state_dict(), whole.state_dict())
    assert resumed.config.scaling_factor == whole.config.scaling_factor


def test_a_resumed_plaid_training_equals_an_uninterrupted_one(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = list(corpus.captions)
    tokenizer = train_tokenizer(texts, 300)
    tokens = tokenize_padded(tokenizer, texts, 16)
    recipe = PlaidRecipe(dim=16, n_blocks=2, n_heads=2, steps=6, batch_size=8, warmup=2, bias_warmup=4,
                         log_every=1)
    whole = train_plaid(tokens, 300, recipe)
    _interrupted(lambda log: train_plaid(tokens, 300, recipe, log=log,
                                         checkpoints=Checkpoints(tmp_path, every_steps=1)), stop_at=4)
    resumed = train_plaid(tokens, 300, recipe, checkpoints=Checkpoints(tmp_path, resume=True, every_steps=1))
    for name in ("net", "schedule", "bounds", "embedding"):
        assert _same(getattr(resumed, name).state_dict(), getattr(whole, name).state_dict()), name
