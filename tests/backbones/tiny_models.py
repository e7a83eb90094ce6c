"""One tiny model per backbone family of ``FAMILY_TABLE``, saved locally the way a download is laid out.

:data:`TINY_MODELS` is the table the contract suite (``test_contract.py``) runs over; a family of
``FAMILY_TABLE`` without an entry here fails that suite. Each entry says how to write its
checkpoint folder, the load options it is read with, where its blocks are (to count their
calls), and what its declared noising at timestep t gives (to check the noisy input against the
family's own formula). A family may have several entries (DINOv2 with registers, RoBERTa for
the ``bert`` family, Plaid with random noising): the contract holds for each.

The per-family test files read the same folders and backbones through the session fixture
``tiny_models`` (``tests/backbones/conftest.py``), so every model is built and loaded once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    RobertaConfig,
    RobertaModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    T5Config,
    T5ForConditionalGeneration,
)

from difffeat_tune.backbones._base import Backbone, Encoded, seeded_normal
from difffeat_tune.backbones._family import (
    ENCODER_TIMESTEP,
    BackboneFamily,
    LoadOptions,
)
from difffeat_tune.backbones._registry import FAMILY_TABLE
from difffeat_tune.backbones._tiny_pipelines import (
    build_tiny_flux,
    build_tiny_pixart,
    build_tiny_sd,
    build_tiny_sd3,
)
from difffeat_tune.backbones.dit import build_tiny_dit
from difffeat_tune.backbones.plaid import build_tiny_plaid
from tests.backbones.hf_tiny import save_tokenizer
from tests.backbones.tiny_parts import ddpm_alpha_bar

#: The transformers towers' size (CLIP, SigLIP): 4 layers of width 32.
TOWER = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
#: DINOv2's size: 4 layers of width 32, 28 px images in 14 px patches (2 x 2 patches).
DINOV2_SIZE = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 28,
               "patch_size": 14}
DINOV2_REGISTERS = 2
#: Layers of the tiny BERT, RoBERTa, T5 and masked-LM checkpoints.
TEXT_LAYERS = 4
#: Captions the tiny Plaid tokenizer learns (byte-level BPE: any caption encodes).
PLAID_CAPTIONS = (
    "a dog runs on the green grass",
    "two cats sleep on a red sofa",
    "a man rides a bicycle in the city",
    "In this photo, there are also some chairs, bottles.",
    "a plate of food with broccoli and rice",
    "a red bus waits at the stop in the rain",
)
PLAID_TOKEN_LENGTH = 16
FLUX_SIDE = 16  # pixels: an 8 x 8 latent, 16 packed tokens

#: ``(what, computed, expected)``: the backbone's noisy input at t and the family's declared formula.
NoiseCheck = list[tuple[str, torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------- checkpoint builders


def build_plaid(folder: Path) -> Path:
    return build_tiny_plaid(folder, PLAID_CAPTIONS, seed=0)


def build_two_towers(folder: Path, kind: str) -> None:
    """A CLIP or SigLIP two-tower checkpoint with its tokenizer and image processor."""
    torch.manual_seed(0)
    if kind == "clip":
        tokenizer = save_tokenizer(folder, "clip")
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        config = CLIPConfig(text_config={**TOWER, **ids, "vocab_size": len(tokenizer), "max_position_embeddings": 20},
                            vision_config={**TOWER, "image_size": 32, "patch_size": 8}, projection_dim=16)
        CLIPModel(config).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        tokenizer = save_tokenizer(folder, "t5")
        config = SiglipConfig(text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                                           "pad_token_id": tokenizer.pad_token_id},
                              vision_config={**TOWER, "image_size": 32, "patch_size": 8})
        SiglipModel(config).save_pretrained(folder)
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_dinov2(folder: Path, registers: int = 0) -> None:
    """A DINOv2 checkpoint (with ``registers`` register tokens) and its image processor."""
    torch.manual_seed(0)
    if registers:
        config = Dinov2WithRegistersConfig(**DINOV2_SIZE, num_register_tokens=registers)
        Dinov2WithRegistersModel(config).save_pretrained(folder)
    else:
        Dinov2Model(Dinov2Config(**DINOV2_SIZE)).save_pretrained(folder)
    # DINOv2's processor: resize the shorter side, centre-crop (256 -> 224 for the released models).
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)


def build_text_encoder(folder: Path, kind: str) -> None:
    """A BERT masked-LM, a RoBERTa or a T5 encoder-decoder checkpoint with its tokenizer."""
    tokenizer = save_tokenizer(folder, "t5" if kind == "t5" else "bert")
    torch.manual_seed(0)
    size = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if kind == "bert":  # a masked-LM checkpoint: the bert family reads its encoder, the mlm family all of it
        BertForMaskedLM(BertConfig(**size, hidden_size=32, num_hidden_layers=TEXT_LAYERS, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=48)).save_pretrained(folder)
    elif kind == "roberta":
        RobertaModel(RobertaConfig(**size, hidden_size=32, num_hidden_layers=TEXT_LAYERS, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=50)).save_pretrained(folder)
    else:  # a full encoder-decoder checkpoint: the family reads its encoder
        T5ForConditionalGeneration(T5Config(**size, d_model=32, d_kv=16, d_ff=64, num_layers=TEXT_LAYERS, num_heads=2,
                                            eos_token_id=tokenizer.eos_token_id,
                                            decoder_start_token_id=tokenizer.pad_token_id)).save_pretrained(folder)


def build_clip(folder: Path) -> None:
    build_two_towers(folder, "clip")


def build_siglip(folder: Path) -> None:
    build_two_towers(folder, "siglip")


def build_dinov2_registers(folder: Path) -> None:
    build_dinov2(folder, DINOV2_REGISTERS)


def build_bert(folder: Path) -> None:
    build_text_encoder(folder, "bert")


def build_roberta(folder: Path) -> None:
    build_text_encoder(folder, "roberta")


def build_t5(folder: Path) -> None:
    build_text_encoder(folder, "t5")


# ---------------------------------------------------------------------------- blocks and declared noise


def own_blocks(backbone: Backbone) -> Sequence[nn.Module]:
    """The blocks a backbone keeps as ``blocks`` (transformers and diffusers pipeline families)."""
    return backbone.blocks  # type: ignore[attr-defined,no-any-return]


def transformer_blocks(backbone: Backbone) -> Sequence[nn.Module]:
    """A diffusers transformer's ``transformer_blocks`` (PixArt, SD3)."""
    return list(backbone.denoiser.transformer_blocks)  # type: ignore[attr-defined]


def joint_then_single(backbone: Backbone) -> Sequence[nn.Module]:
    """Flux's numbering: the joint blocks 1..J, then the single blocks J+1..J+S."""
    model = backbone.denoiser  # type: ignore[attr-defined]
    return [*model.transformer_blocks, *model.single_transformer_blocks]


def unet_stages(backbone: Backbone) -> Sequence[nn.Module]:
    """A U-Net's stages in forward order: down blocks, the mid block, up blocks."""
    unet = backbone.denoiser  # type: ignore[attr-defined]
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def _latent_noise(backbone: Backbone, batch: Encoded, t: int, x0_weight: float, eps_weight: float) -> NoiseCheck:
    x0 = batch.tensors["latents"].float()
    eps = seeded_normal(batch.ids, t, x0.shape[1:], backbone.noise_seed, x0.device)  # type: ignore[attr-defined]
    computed = backbone.noisy_latents(batch, t)  # type: ignore[attr-defined]
    return [("x_t", computed, x0_weight * x0 + eps_weight * eps)]


def ddpm_noise(*, scaled_linear: bool = False) -> Callable[[Backbone, Encoded, int], NoiseCheck]:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the 1000-step (scaled-)linear betas."""
    def check(backbone: Backbone, batch: Encoded, t: int) -> NoiseCheck:
        abar = ddpm_alpha_bar(t, scaled_linear=scaled_linear)
        return _latent_noise(backbone, batch, t, abar**0.5, (1 - abar) ** 0.5)

    return check


def flow_noise(shift: Callable[[Backbone], float]) -> Callable[[Backbone, Encoded, int], NoiseCheck]:
    """x_t = (1 - sigma) x0 + sigma eps, sigma = s u / (1 + (s - 1) u), u = t / 1000; the model is told 1000 sigma."""
    def check(backbone: Backbone, batch: Encoded, t: int) -> NoiseCheck:
        s, u = shift(backbone), t / 1000
        sigma = s * u / (1 + (s - 1) * u)
        told = torch.tensor(backbone.noising.model_timestep(t), dtype=torch.float64)  # type: ignore[attr-defined]
        return [*_latent_noise(backbone, batch, t, 1 - sigma, sigma),
                ("model timestep", told, torch.tensor(1000 * sigma, dtype=torch.float64))]

    return check


def flux_dynamic_shift(backbone: Backbone) -> float:
    """exp(mu), mu linear in the image token count between (256, 0.5) and (4096, 1.15), as FLUX.1-dev's scheduler."""
    tokens = (backbone.resolution // 2 // 2) ** 2  # type: ignore[attr-defined]  # VAE factor 2, 2 x 2 packing
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    return math.exp(mu)


def plaid_random_noise(backbone: Backbone, batch: Encoded, t: int) -> NoiseCheck:
    """z_t = alpha_t E[tokens] + sigma_t eps (continuous time t / 1000, seeded Gaussian noise)."""
    _, alpha, sigma = backbone.schedule_at([t])  # type: ignore[attr-defined]
    x0 = backbone.embedding.normalized()[batch.tensors["tokens"]]  # type: ignore[attr-defined]
    eps = seeded_normal(batch.ids, t, x0.shape[1:], backbone.noise_seed, x0.device)  # type: ignore[attr-defined]
    computed = backbone.noisy_embeddings(batch, [t])[t]  # type: ignore[attr-defined]
    return [("z_t", computed, float(alpha) * x0 + float(sigma) * eps)]


def plaid_ddim_noise(backbone: Backbone, batch: Encoded, t: int) -> NoiseCheck:
    """DDIM inversion starts from z_0 = alpha_0 E[tokens] (its later steps are checked in test_plaid.py)."""
    _, alpha, _ = backbone.schedule_at([0])  # type: ignore[attr-defined]
    x0 = backbone.embedding.normalized()[batch.tensors["tokens"]]  # type: ignore[attr-defined]
    return [("z_0", backbone.noisy_embeddings(batch, [0])[0], float(alpha) * x0)]  # type: ignore[attr-defined]


def masking_noise(backbone: Backbone, batch: Encoded, t: int) -> NoiseCheck:
    """round(t / 1000 x n) of a row's n real tokens become the mask token; nothing else changes."""
    tokens, real = batch.tensors["tokens"], batch.tensors["real"]
    masked = backbone.masked_tokens(batch, t)  # type: ignore[attr-defined]
    changed = masked != tokens
    expected = torch.tensor([math.floor(t * int(n) / 1000 + 0.5) for n in real.sum(dim=1)])
    return [("masked per row", changed.sum(dim=1), expected),
            ("changed outside the caption", (changed & ~real).sum(), torch.tensor(0)),
            ("not the mask token", (masked[changed] != backbone.mask_token_id).sum(), torch.tensor(0))]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class TinyModel:
    """A tiny checkpoint of one family and what the contract suite needs to know about it.

    Attributes:
        name: the entry's id (test ids, folder name).
        key: its ``FAMILY_TABLE`` key, ``(modality, family name)``.
        build: writes the checkpoint into a folder that does not exist yet.
        options: :class:`LoadOptions` fields it is loaded with (``device="cpu"`` always).
        blocks: the backbone's blocks 1..N in forward order (to count their calls).
        noise: the noisy input at t next to the family's declared formula (``None``: encoder).
        grid: the timesteps a request uses (default: 10 and 500, or the encoders' only t = 0).
        trajectory: a pass at t > 0 needs passes at earlier timesteps (DDIM inversion), so only
            a single t = 0 request is one pass.
        hub: the family also reads hub ids (an uncached one names the download command).
    """

    name: str
    key: tuple[str, str]
    build: Callable[[Path], object]
    options: Mapping[str, object] = field(default_factory=dict)
    blocks: Callable[[Backbone], Sequence[nn.Module]] = own_blocks
    noise: Callable[[Backbone, Encoded, int], NoiseCheck] | None = None
    grid: tuple[int, ...] = ()
    trajectory: bool = False
    hub: bool = True

    @property
    def family(self) -> BackboneFamily:
        return FAMILY_TABLE[self.key]

    @property
    def diffusion(self) -> bool:
        """Whether t means a noise level (else the family is an encoder fixed at t = 0)."""
        return self.family.timestep != ENCODER_TIMESTEP

    @property
    def timesteps(self) -> list[int]:
        """Timesteps a request uses: :attr:`grid`, else two noise levels, or the encoders' only one."""
        return list(self.grid) or ([10, 500] if self.diffusion else [0])

    def load_options(self, **changes: object) -> LoadOptions:
        return LoadOptions(**{"device": "cpu", **self.options, **changes})  # type: ignore[arg-type]


def _models() -> tuple[TinyModel, ...]:
    image, text = "image", "text"
    return (
        TinyModel("dit", (image, "dit"), build_tiny_dit, blocks=lambda b: b.transformer.transformer_blocks,  # type: ignore[attr-defined]
                  noise=ddpm_noise()),
        TinyModel("plaid", (text, "plaid"), build_plaid, {"token_length": PLAID_TOKEN_LENGTH},
                  blocks=lambda b: b.net.blocks, noise=plaid_ddim_noise, grid=(0, 20), trajectory=True,
                  hub=False),  # type: ignore[attr-defined]
        TinyModel("plaid-random", (text, "plaid"), build_plaid,
                  {"token_length": PLAID_TOKEN_LENGTH, "text_noising": "random"},
                  blocks=lambda b: b.net.blocks, noise=plaid_random_noise, hub=False),  # type: ignore[attr-defined]
        TinyModel("pixart", (image, "pixart"), build_tiny_pixart, blocks=transformer_blocks, noise=ddpm_noise()),
        TinyModel("sd3", (image, "sd3"), build_tiny_sd3, blocks=transformer_blocks, noise=flow_noise(lambda b: 3.0)),
        TinyModel("flux", (image, "flux"), build_tiny_flux, {"resolution": FLUX_SIDE}, blocks=joint_then_single,
                  noise=flow_noise(flux_dynamic_shift)),
        TinyModel("sd", (image, "sd"), build_tiny_sd, blocks=unet_stages, noise=ddpm_noise(scaled_linear=True)),
        TinyModel("mlm", (text, "mlm"), build_bert, {"token_length": 16},
                  noise=masking_noise),
        TinyModel("clip-image", (image, "clip"), build_clip),
        TinyModel("clip-text", (text, "clip"), build_clip),
        TinyModel("siglip-image", (image, "siglip"), build_siglip),
        TinyModel("siglip-text", (text, "siglip"), build_siglip),
        TinyModel("dinov2", (image, "dinov2"), build_dinov2),
        TinyModel("dinov2-registers", (image, "dinov2"), build_dinov2_registers),
        TinyModel("bert", (text, "bert"), build_bert, {"token_length": 16}),
        TinyModel("roberta", (text, "bert"), build_roberta, {"token_length": 16}),
        TinyModel("t5", (text, "t5"), build_t5, {"token_length": 16}),
    )


#: Every tiny model, by name (the contract suite's parameters).
TINY_MODELS: Mapping[str, TinyModel] = {m.name: m for m in _models()}


class TinyModels:
    """Builds each tiny checkpoint once under ``root`` and loads each backbone once (session cache).

    Entries sharing a checkpoint (the two CLIP towers, the BERT masked LM for ``bert`` and
    ``mlm``, Plaid's two noisings) share its folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[Callable[[Path], object], Path] = {}
        self._backbones: dict[str, Backbone] = {}

    def folder(self, name: str) -> Path:
        """The saved checkpoint folder of entry ``name`` (built on first use)."""
        model = TINY_MODELS[name]
        if model.build not in self._folders:
            folder = self.root / name
            model.build(folder)
            self._folders[model.build] = folder
        return self._folders[model.build]

    def backbone(self, name: str) -> Backbone:
        """Entry ``name`` loaded through its family with its options (loaded on first use; do not mutate)."""
        if name not in self._backbones:
            model = TINY_MODELS[name]
            self._backbones[name] = model.family.load(str(self.folder(name)), model.load_options())
        return self._backbones[name]
