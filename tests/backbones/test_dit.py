from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones.dit import load_dit
from tests.backbones.tiny_models import TinyModels
from tests.conftest import make_split


@pytest.fixture(scope="module")
def tiny_folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("dit")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone("dit")


def test_dit_xl2_config_builds_28_blocks_of_width_1152() -> None:
    with torch.device("meta"):
        model = DiTTransformer2DModel()  # diffusers' defaults are DiT-XL/2
    assert len(model.transformer_blocks) == 28
    assert model.config.num_attention_heads * model.config.attention_head_dim == 1152
    assert model.transformer_blocks[0].ff.net[2].out_features == 1152


def test_the_tiny_dit_has_dit_xl2s_depth_at_64_px(backbone) -> None:  # type: ignore[no-untyped-def]
    # Its save/load round trip is test_contract.py's (every family's).
    assert backbone.num_blocks == 28 and backbone.resolution == 64


def test_one_pass_equals_a_full_forward_per_timestep(backbone) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 4)
    batch = backbone.encode(split, range(4))
    shared = backbone.features(batch, [10, 100], [8, 24])
    for t in (10, 100):
        alone = backbone.features(batch, [t], [8])
        torch.testing.assert_close(alone[t][8], shared[t][8], rtol=1e-4, atol=1e-5)
    # Independent reference: the scheduler's add_noise, then a manual forward of the diffusers
    # blocks (patch embedding, blocks 1..24 called one by one, no hooks) with the null class.
    from diffusers import DDIMScheduler

    from difffeat_tune.backbones._base import seeded_normal

    x0 = batch.tensors["latents"]
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    steps = torch.full((4,), 100)
    xt = scheduler.add_noise(x0, seeded_normal(batch.ids, 100, x0.shape[1:], 0, torch.device("cpu")), steps)
    torch.testing.assert_close(backbone.noisy_latents(batch, 100), xt)
    model = backbone.transformer
    labels = torch.full((4,), 1000)
    with torch.inference_mode():
        hidden = model.pos_embed(xt)
        manual = {}
        for b, block in enumerate(model.transformer_blocks[:24], start=1):
            hidden = block(hidden, timestep=steps, class_labels=labels)
            manual[b] = hidden.mean(dim=1)
    for b in (8, 24):
        torch.testing.assert_close(manual[b], shared[100][b], rtol=1e-4, atol=1e-5)


def test_folder_without_subfolders_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    with pytest.raises(BackboneError, match="vae, scheduler"):
        load_dit(tmp_path)


def test_preprocess_resizes_and_center_crops_to_the_model_resolution(backbone) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    wide = Image.fromarray(np.full((40, 120, 3), 255, dtype=np.uint8))
    pixels = backbone.preprocess(wide)
    assert pixels.shape == (3, 64, 64)
    assert float(pixels.max()) == pytest.approx(1.0) and float(pixels.min()) >= -1.0


