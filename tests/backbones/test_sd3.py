from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, T5EncoderModel

from difffeat_tune._errors import BackboneError
from difffeat_tune._paths import CACHE_ENV
from difffeat_tune.backbones._base import seeded_normal
from difffeat_tune.backbones._image import center_crop_pixels
from difffeat_tune.backbones.sd3 import FAMILY, load_sd3
from tests.backbones.tiny_models import TinyModels
from tests.backbones.tiny_parts import spy_from_pretrained
from tests.conftest import make_split


@pytest.fixture(scope="module")
def folder(tiny_models: TinyModels) -> Path:
    return tiny_models.folder("sd3")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels):  # type: ignore[no-untyped-def]
    return tiny_models.backbone("sd3")


def test_noise_level_is_the_schedulers_shifted_sigma(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    for t in (10, 50, 150, 999):
        scheduler.set_timesteps(sigmas=[t / 1000])
        assert backbone.noising.sigma(t) == pytest.approx(float(scheduler.sigmas[0]), rel=1e-5)
        assert backbone.noising.model_timestep(t) == pytest.approx(float(scheduler.timesteps[0]), rel=1e-5)
    assert backbone.settings()["noising"]["shift"] == 3.0


def test_hooked_features_equal_a_manual_forward(folder: Path, backbone) -> None:  # type: ignore[no-untyped-def]
    assert backbone.num_blocks == 4 and backbone.width == 16 and backbone.resolution == 16
    batch = backbone.encode(make_split("train", 3), range(3))
    feats = backbone.features(batch, [30, 400], [1, 3])
    # Independent reference: the library pipeline's encode_prompt(""), sigma = 3u / (1 + 2u),
    # then the library's modules called in order; the image stream is hidden_states (output[1]).
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, transformer=backbone.denoiser, vae=backbone.vae)
    embeds, _, pooled, _ = pipe.encode_prompt("", "", "", do_classifier_free_guidance=False)
    model = backbone.denoiser
    x0 = batch.tensors["latents"]
    with torch.inference_mode():
        for t in (30, 400):
            u = t / 1000
            sigma = 3 * u / (1 + 2 * u)
            xt = (1 - sigma) * x0 + sigma * seeded_normal(batch.ids, t, x0.shape[1:], 0, x0.device)
            hidden = model.pos_embed(xt)
            temb = model.time_text_embed(torch.full((3,), 1000 * sigma), pooled.expand(3, -1))
            context = model.context_embedder(embeds.expand(3, -1, -1))
            for b, block in enumerate(model.transformer_blocks[:3], start=1):
                context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
                if b in (1, 3):
                    torch.testing.assert_close(feats[t][b], hidden.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_latents_are_the_shifted_and_scaled_posterior_mean(backbone) -> None:  # type: ignore[no-untyped-def]
    split = make_split("train", 2)
    batch = backbone.encode(split, range(2))
    pixels = torch.stack([center_crop_pixels(split.images.load(i), 16) for i in range(2)])
    with torch.inference_mode():
        mean = backbone.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(batch.tensors["latents"], (mean - 0.0609) * 1.5305)


def test_folder_without_the_t5_encoder_names_the_missing_subfolder(folder: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    shutil.rmtree(partial / "text_encoder_3")
    with pytest.raises(BackboneError, match="lacks subfolder.s. text_encoder_3"):
        load_sd3(str(partial))


def test_conditioning_is_cached_and_the_text_encoders_not_loaded_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    clip_loads = spy_from_pretrained(monkeypatch, CLIPTextModelWithProjection)
    t5_loads = spy_from_pretrained(monkeypatch, T5EncoderModel)
    first = load_sd3(str(folder), device="cpu")
    assert (len(clip_loads), len(t5_loads)) == (2, 1)
    second = load_sd3(str(folder), device="cpu")
    assert (len(clip_loads), len(t5_loads)) == (2, 1)
    for name, value in first.conditioning.items():
        torch.testing.assert_close(second.conditioning[name], value)


def test_family_is_flow_matching_with_joint_blocks() -> None:
    assert FAMILY.name == "sd3" and "flow matching" in FAMILY.timestep and "joint" in FAMILY.blocks


