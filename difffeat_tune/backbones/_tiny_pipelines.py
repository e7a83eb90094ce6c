"""Small seeded random diffusers pipelines with the released layout, built and saved locally.

Each builder assembles a real pipeline object (``PixArtAlphaPipeline``, ``StableDiffusion3Pipeline``,
``FluxPipeline``, ``StableDiffusionPipeline``) from tiny configs: tokenizers built in memory
(character-level CLIP BPE, unigram T5), 1-2 layer text encoders, a 2-level VAE (2x downsampling)
and a denoiser a few blocks deep, then saves it with ``save_pretrained``. The folder therefore has
exactly the layout of a downloaded checkpoint (``model_index.json`` plus one subfolder per
component) and loads through the same code, with no network. The weights are random: the
features mean nothing; the tests and benchmarks use them to check the code paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_t5(d_model: int, *, seed: int = 0) -> tuple[T5Tokenizer, T5EncoderModel]:
    """A unigram T5 tokenizer over letters and a few words, and a 1-layer T5 encoder."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -1.0) for w in ("red", "circle", "blue", "square")]
    vocab += [(c, -3.0) for c in LETTERS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, T5EncoderModel(config).eval()


def tiny_clip(hidden: int, *, projection: int | None = None,
              seed: int = 0) -> tuple[CLIPTokenizer, CLIPTextModel | CLIPTextModelWithProjection]:
    """A character-level CLIP tokenizer (77 tokens) and a 2-layer CLIP text model.

    With ``projection`` the model is a ``CLIPTextModelWithProjection`` (SD3's two CLIP encoders).
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return tokenizer, model.eval()


def tiny_vae(latent_channels: int, *, scaling: float = 0.18215, shift: float | None = None) -> AutoencoderKL:
    """A 2-level AutoencoderKL: 2x downsampling, so 16 px give an 8 x 8 latent."""
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                         norm_num_groups=8, sample_size=16, scaling_factor=scaling, shift_factor=shift)


def build_tiny_pixart(folder: Path, *, seed: int = 0, layers: int = 6) -> Path:
    """A PixArt-alpha pipeline: width 24, ``layers`` blocks, 16 px (8 x 8 latent), T5 of width 16,
    with the 1024-px checkpoints' size micro-conditions switched on."""
    tokenizer, text_encoder = tiny_t5(16, seed=seed)
    torch.manual_seed(seed)
    # width 24: divisible by 3, as the size micro-conditions need
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=8, patch_size=2, cross_attention_dim=24, caption_channels=16, use_additional_conditions=True,
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_vae(4),
                               transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd3(folder: Path, *, seed: int = 0, layers: int = 4) -> Path:
    """An SD3 pipeline: width 16, ``layers`` joint blocks, 16 px (16-channel 8 x 8 latent), two CLIP
    encoders of width 8 and a T5 of width 32, shift 3."""
    tokenizer, text_encoder = tiny_clip(8, projection=8, seed=seed + 1)
    tokenizer_2, text_encoder_2 = tiny_clip(8, projection=8, seed=seed + 2)
    tokenizer_3, text_encoder_3 = tiny_t5(32, seed=seed + 3)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=16,
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(16, scaling=1.5305, shift=0.0609), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_flux(folder: Path, *, seed: int = 0, joint: int = 2, single: int = 3) -> Path:
    """A FLUX.1-dev-like pipeline: width 16, ``joint`` + ``single`` blocks, guidance embedding,
    dynamic shift, a CLIP of width 16 and a T5 of width 32. It has no default resolution of its
    own (Flux's is 1024 px): load it with ``resolution=16`` (an 8 x 8 latent, 16 packed tokens)."""
    tokenizer, text_encoder = tiny_clip(16, seed=seed + 1)
    tokenizer_2, text_encoder_2 = tiny_t5(32, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=joint, num_single_layers=single, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(4, scaling=0.3611, shift=0.1159), text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd(folder: Path, *, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-like pipeline: a U-Net with 2 down stages (8, 16 channels), a mid
    stage and 2 up stages at 16 px, a CLIP of width 16, scaled-linear betas; no safety checker."""
    tokenizer, text_encoder = tiny_clip(16, seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(4), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
