from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones.dit import build_tiny_dit, load_dit
from difffeat_tune.data._base import Dataset
from tests.conftest import make_split

PAPER_BLOCKS = [8, 12, 16, 20, 24]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dit(tmp_path_factory.mktemp("dit") / "tiny", seed=0)


@pytest.fixture(scope="module")
def backbone(tiny_folder: Path):  # type: ignore[no-untyped-def]
    return load_dit(tiny_folder, device="cpu")


def test_dit_xl2_config_builds_28_blocks_of_width_1152() -> None:
    with torch.device("meta"):
        model = DiTTransformer2DModel()  # diffusers' defaults are DiT-XL/2
    assert len(model.transformer_blocks) == 28
    assert model.config.num_attention_heads * model.config.attention_head_dim == 1152
    assert model.transformer_blocks[0].ff.net[2].out_features == 1152


def test_tiny_save_load_round_trip_gives_identical_weights(tiny_folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    again = load_dit(tiny_folder, device="cpu")
    for key, value in backbone.transformer.state_dict().items():
        torch.testing.assert_close(again.transformer.state_dict()[key], value)
    assert again.fingerprint() == backbone.fingerprint()
    assert backbone.num_blocks == 28 and backbone.resolution == 64


def test_features_have_one_pooled_vector_per_row_timestep_and_block(backbone) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 6)
    feats = backbone.features(backbone.encode(split, range(6)), [10, 50], PAPER_BLOCKS)
    assert set(feats) == {10, 50}
    for t in feats:
        assert set(feats[t]) == set(PAPER_BLOCKS)
        for value in feats[t].values():
            assert value.shape == (6, backbone.width) and value.dtype == torch.float32
    assert not torch.allclose(feats[10][8], feats[10][24])
    assert not torch.allclose(feats[10][12], feats[50][12])


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


def test_row_features_do_not_depend_on_the_batch(backbone) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 5)
    together = backbone.features(backbone.encode(split, range(5)), [30], [12])[30][12]
    alone = backbone.features(backbone.encode(split, [3]), [30], [12])[30][12]
    torch.testing.assert_close(alone[0], together[3], rtol=1e-4, atol=1e-5)


def test_noise_seed_changes_features(tiny_folder: Path) -> None:
    split = make_split("train", 3)
    a = load_dit(tiny_folder, device="cpu", noise_seed=0)
    b = load_dit(tiny_folder, device="cpu", noise_seed=1)
    fa = a.features(a.encode(split, range(3)), [150], [8])[150][8]
    fb = b.features(b.encode(split, range(3)), [150], [8])[150][8]
    assert not torch.allclose(fa, fb)
    assert a.settings() != b.settings()


@pytest.mark.parametrize(("timesteps", "blocks"), [([10], [0]), ([10], [29]), ([1000], [8]), ([-1], [8])])
def test_invalid_timestep_or_block_is_rejected(backbone, timesteps, blocks) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackboneError, match="outside"):
        backbone.validate(timesteps, blocks)


def test_folder_without_subfolders_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    with pytest.raises(BackboneError, match="vae, scheduler"):
        load_dit(tmp_path)


def test_unavailable_hub_weights_say_where_to_put_them() -> None:
    with pytest.raises(BackboneError, match="huggingface-cli download"):
        load_dit("facebook/DiT-XL-2-256")


def test_preprocess_resizes_and_center_crops_to_the_model_resolution(backbone) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    wide = Image.fromarray(np.full((40, 120, 3), 255, dtype=np.uint8))
    pixels = backbone.preprocess(wide)
    assert pixels.shape == (3, 64, 64)
    assert float(pixels.max()) == pytest.approx(1.0) and float(pixels.min()) >= -1.0


def test_split_without_images_is_rejected(backbone) -> None:  # type: ignore[no-untyped-def]
    from difffeat_tune._errors import DataError

    ds = Dataset("t", ("a", "b", "c"), "multilabel", {"train": make_split("train", 2, images=False)})
    with pytest.raises(DataError, match="no images"):
        backbone.encode(ds.split("train"), [0])
