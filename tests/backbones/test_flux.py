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
from tests.backbones.tiny_models import FLUX_SIDE, TinyModels
from tests.backbones.tiny_parts import spy_from_pretrained
from tests.conftest import make_split

SIDE = FLUX_SIDE
JOINT, SINGLE = 2, 3  # build_tiny_flux's blocks


@pytest.fixture(scope="module")
def folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("flux")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone("flux")


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


def test_a_resolution_off_the_latent_grid_is_rejected(folder: Path) -> None:
    with pytest.raises(BackboneError, match="resolution 18 is not a positive multiple of 4"):
        load_flux(str(folder), device="cpu", resolution=18)


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
