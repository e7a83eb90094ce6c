from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from transformers import CLIPTextModel, T5EncoderModel

from difffeat_tune._errors import BackboneError
from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.backbones._base import seeded_normal
from difffeat_tune.backbones.flux import FAMILY, latent_image_ids, load_flux, pack_latents
from difffeat_tune.backbones._tiny_pipelines import build_tiny_flux
from tests.backbones.tiny_parts import count_calls, spy_from_pretrained
from tests.conftest import make_split

SIDE = 16  # pixels: an 8 x 8 latent, 16 packed tokens
JOINT, SINGLE = 2, 3  # build_tiny_flux's blocks


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "pipe")


@pytest.fixture(scope="module")
def backbone(folder: Path):  # type: ignore[no-untyped-def]
    return load_flux(str(folder), device="cpu", resolution=SIDE)


def test_packing_and_position_ids_match_the_pipeline() -> None:
    latents = torch.randn(2, 4, 8, 6)
    torch.testing.assert_close(pack_latents(latents), FluxPipeline._pack_latents(latents, 2, 4, 8, 6))
    torch.testing.assert_close(latent_image_ids(4, 3, torch.device("cpu")),
                               FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32))


def test_noise_level_is_the_schedulers_dynamically_shifted_sigma(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)  # 16 image tokens at 16 px
    for t in (10, 50, 150, 999):
        scheduler.set_timesteps(sigmas=[t / 1000], mu=mu)
        assert backbone.noising.sigma(t) == pytest.approx(float(scheduler.sigmas[0]), rel=1e-5)


def test_hooked_features_equal_a_manual_forward(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.num_blocks == JOINT + SINGLE and backbone.width == 16 and backbone.guidance == 3.5
    batch = backbone.encode(make_split("train", 3), range(3))
    wanted = [2, 4]  # the last joint block and the second single block
    feats = backbone.features(batch, [40, 500], wanted)
    # Independent reference: the pipeline's own encode_prompt(""), packing and ids, then the
    # library's modules called in order: joint blocks, then single blocks; image stream only.
    pipe = FluxPipeline.from_pretrained(folder, transformer=backbone.denoiser, vae=backbone.vae)
    embeds, pooled, text_ids = pipe.encode_prompt("", "", device="cpu")
    model = backbone.denoiser
    x0 = batch.tensors["latents"]
    img_ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    with torch.inference_mode():
        for t in (40, 500):
            sigma = backbone.noising.sigma(t)
            xt = (1 - sigma) * x0 + sigma * seeded_normal(batch.ids, t, x0.shape[1:], 0, x0.device)
            hidden = model.x_embedder(FluxPipeline._pack_latents(xt, 3, 4, 8, 8))
            temb = model.time_text_embed(torch.full((3,), sigma * 1000), torch.full((3,), 3.5 * 1000),
                                         pooled.expand(3, -1))
            context = model.context_embedder(embeds.expand(3, -1, -1))
            rotary = model.pos_embed(torch.cat([text_ids, img_ids]))
            blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
            for b, block in enumerate(blocks[:4], start=1):
                context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                        image_rotary_emb=rotary)
                if b in wanted:
                    torch.testing.assert_close(feats[t][b], hidden.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_forward_stops_after_the_deepest_requested_block(backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 2), range(2))
    blocks = [*backbone.denoiser.transformer_blocks, *backbone.denoiser.single_transformer_blocks]
    with count_calls(blocks) as counts:
        backbone.features(batch, [10, 50], [1, 2])
    assert counts == [1, 1, 0, 0, 0]  # no single block ran
    with count_calls(blocks) as counts:
        backbone.features(batch, [10], [3])
    assert counts == [1, 1, 1, 0, 0]


def test_wrong_block_timestep_or_resolution_is_rejected(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    batch = backbone.encode(make_split("train", 1), [0])
    with pytest.raises(BackboneError, match="block 6 is outside 1..5"):
        backbone.features(batch, [10], [6])
    with pytest.raises(BackboneError, match="timestep 1000"):
        backbone.features(batch, [1000], [1])
    with pytest.raises(BackboneError, match="resolution 18 is not a positive multiple of 4"):
        load_flux(str(folder), device="cpu", resolution=18)


def test_missing_checkpoint_names_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="hf download black-forest-labs/FLUX.1-dev --local-dir"):
        load_flux()
    with pytest.raises(BackboneError, match="does not exist"):
        load_flux(str(tmp_path / "nowhere"))


def test_conditioning_is_cached_and_the_text_encoders_not_loaded_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    clip_loads = spy_from_pretrained(monkeypatch, CLIPTextModel)
    t5_loads = spy_from_pretrained(monkeypatch, T5EncoderModel)
    first = load_flux(str(folder), device="cpu", resolution=SIDE)
    assert (len(clip_loads), len(t5_loads)) == (1, 1)
    second = load_flux(str(folder), device="cpu", resolution=SIDE)
    assert (len(clip_loads), len(t5_loads)) == (1, 1)
    assert second.conditioning["prompt_embeds"].shape == (1, 512, 32)  # FluxPipeline's max_sequence_length
    for name, value in first.conditioning.items():
        torch.testing.assert_close(second.conditioning[name], value)


def test_family_numbers_joint_then_single_blocks() -> None:
    assert FAMILY.name == "flux" and "single blocks J+1..J+S" in FAMILY.blocks
