"""Plaid's release files: read them with strict key matching, write them, build a random tiny model.

A model folder holds the release's four ``torch.save`` state dicts (``model.pt``,
``noise_schedule.pt``, ``gamma_bounds.pt``, ``embedding_matrix.pt``), optionally ``config.json``
(the :class:`~difffeat_tune.backbones._plaid_net.PlaidConfig` fields; when absent the
configuration is inferred from the state-dict shapes) and ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from difffeat_tune._errors import BackboneError, ConfigError
from difffeat_tune._io import atomic_write
from difffeat_tune.backbones._plaid_net import (
    SCHEDULE_WIDTH,
    EmbeddingMatrix,
    GammaBounds,
    NoiseSchedule,
    PlaidConfig,
    PlaidNet,
)
from difffeat_tune.backbones._plaid_tokenizer import TOKENIZER_FILE, train_tokenizer

logger = logging.getLogger(__name__)

#: File names of the released layout.
MODEL_FILE = "model.pt"
SCHEDULE_FILE = "noise_schedule.pt"
GAMMA_BOUNDS_FILE = "gamma_bounds.pt"
EMBEDDING_FILE = "embedding_matrix.pt"
CONFIG_FILE = "config.json"
WEIGHT_FILES = (MODEL_FILE, SCHEDULE_FILE, GAMMA_BOUNDS_FILE, EMBEDDING_FILE)
WEIGHTS_HINT = (
    "Plaid 1B's weights are in release v1.0.0 of github.com/igul222/plaid: download the split archive "
    "plaid1b_weights.tar.gz.00, .01 and .02, then `cat plaid1b_weights.tar.gz.* | tar xzf -` and pass "
    "the extracted folder (model.pt, noise_schedule.pt, gamma_bounds.pt, embedding_matrix.pt); put "
    "misc/owt2_tokenizer.json of the same repository there as tokenizer.json"
)


def read_release(folder: Path, device: torch.device) -> tuple[PlaidNet, NoiseSchedule, GammaBounds, EmbeddingMatrix]:
    """The four modules of a release folder (the denoiser on ``device`` in float32).

    Raises:
        BackboneError: the folder or a file is missing, unreadable, or does not match the architecture.
    """
    if not folder.is_dir():
        raise BackboneError(f"Plaid folder {folder} does not exist", WEIGHTS_HINT)
    for file_name in WEIGHT_FILES:
        if not (folder / file_name).is_file():
            raise BackboneError(f"Plaid weight file missing: {folder / file_name}", WEIGHTS_HINT)
    model_path = folder / MODEL_FILE
    model_state = _load_state(model_path)
    config_path = folder / CONFIG_FILE
    config = _read_config(config_path) if config_path.is_file() else _infer_config(model_state, model_path)
    with torch.device("meta"):
        net = PlaidNet(config)
    _load_strict(net, model_state, model_path, config, assign=True)
    net = net.to(device=device, dtype=torch.float32)
    del model_state

    schedule_path = folder / SCHEDULE_FILE
    schedule_state = _load_state(schedule_path)
    w1 = schedule_state.get("W1")
    schedule = NoiseSchedule(w1.shape[0] if isinstance(w1, torch.Tensor) and w1.dim() == 2 else SCHEDULE_WIDTH)
    _load_strict(schedule, schedule_state, schedule_path, config)

    bounds_path = folder / GAMMA_BOUNDS_FILE
    bounds_state = {
        k: v.reshape(()) if isinstance(v, torch.Tensor) and v.numel() == 1 else v
        for k, v in _load_state(bounds_path).items()
    }
    bounds = GammaBounds()
    _load_strict(bounds, bounds_state, bounds_path, config)

    embedding_path = folder / EMBEDDING_FILE
    embedding = EmbeddingMatrix(config.vocab_size, config.embed_dim)
    _load_strict(embedding, _load_state(embedding_path, bare_key="matrix"), embedding_path, config)
    return net, schedule, bounds, embedding


def _load_state(path: Path, bare_key: str | None = None) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` a state dict (memory-mapped when the format allows)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read Plaid weight file {path}: {exc}", WEIGHTS_HINT) from exc
    if isinstance(obj, torch.Tensor) and bare_key is not None:
        obj = {bare_key: obj}
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise BackboneError(f"{path} does not hold a state dict (got {type(obj).__name__})", WEIGHTS_HINT)
    return dict(obj)


def _read_config(path: Path) -> PlaidConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"cannot read Plaid config {path}: {exc}") from exc
    names = {f.name for f in fields(PlaidConfig)}
    if not isinstance(raw, dict) or set(raw) != names:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise BackboneError(f"{path} must hold exactly the fields {sorted(names)}, got {got}")
    try:
        return PlaidConfig(**raw)
    except ValueError as exc:
        raise BackboneError(f"invalid Plaid config {path}: {exc}") from exc


def _infer_config(state: Mapping[str, torch.Tensor], path: Path) -> PlaidConfig:
    """Architecture from the state-dict shapes; heads from the rotary buffer (else dim // 64)."""
    try:
        dim, embed_dim = state["input_linear.weight"].shape
        vocab_size = state["output_linear.weight"].shape[0]
        half_head = state["rotary_emb.inv_freq"].shape[0]
    except (KeyError, ValueError, AttributeError) as exc:
        raise BackboneError(
            f"cannot infer the Plaid configuration from {path}: key {exc} missing or malformed",
            f"the file is not a Plaid model.pt; {WEIGHTS_HINT}",
        ) from exc
    n_blocks = 0
    while f"blocks.{n_blocks}.rmsnorm1.weight" in state:
        n_blocks += 1
    head_dim = 2 * half_head
    n_heads = dim // head_dim if head_dim and dim % head_dim == 0 else max(1, dim // 64)
    try:
        return PlaidConfig(dim=int(dim), n_blocks=n_blocks, n_heads=int(n_heads),
                           embed_dim=int(embed_dim), vocab_size=int(vocab_size))
    except ValueError as exc:
        raise BackboneError(f"cannot infer the Plaid configuration from {path}: {exc}") from exc


def _load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    config: PlaidConfig,
    *,
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``, naming every missing, unexpected or wrong-shape key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} has {list(getattr(state[k], 'shape', [type(state[k]).__name__]))}, "
        f"expected {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_short(wrong)}")
    if problems:
        raise BackboneError(
            f"{path} does not match the Plaid architecture {asdict(config)}: " + "; ".join(problems),
            "check that the file is the released Plaid weight file and that config.json (if any) "
            "describes it",
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


def _short(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def build_tiny_plaid(
    folder: str | Path,
    captions: Iterable[str],
    *,
    seed: int = 0,
    dim: int = 64,
    n_blocks: int = 24,
    n_heads: int = 4,
    embed_dim: int = 16,
    vocab_size: int = 1024,
    gamma_0: float = -3.0,
    gamma_1: float = 6.0,
) -> Path:
    """Write a small random Plaid model in the released layout, loadable by :func:`load_plaid`.

    Trains a byte-level BPE tokenizer on ``captions`` (id 0 = ``<|endoftext|>``), builds a
    seeded random :class:`PlaidNet` (full depth 24 by default, so the paper's text grid of
    blocks applies), noise schedule, gamma bounds and embedding matrix, and saves
    ``model.pt``, ``noise_schedule.pt``, ``gamma_bounds.pt``, ``embedding_matrix.pt``,
    ``config.json`` and ``tokenizer.json``. The tensors depend only on the arguments.

    Args:
        folder: output folder (created; existing files are replaced).
        captions: training text for the tokenizer.
        seed: seed of every random tensor.
        dim, n_blocks, n_heads, embed_dim: architecture (see :class:`PlaidConfig`).
        vocab_size: model vocabulary and tokenizer target size (the tokenizer may end up
            smaller on a small corpus; ids stay below ``vocab_size``).
        gamma_0, gamma_1: log-SNR bounds (``gamma_0 < gamma_1``).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: an argument is out of range.
    """
    texts = [c for c in captions if isinstance(c, str) and c.strip()]
    if not texts:
        raise ConfigError("build_tiny_plaid needs at least one non-empty caption to train its tokenizer")
    if not gamma_0 < gamma_1:
        raise ConfigError(f"gamma_0 ({gamma_0}) must be below gamma_1 ({gamma_1})")
    try:
        config = PlaidConfig(dim=dim, n_blocks=n_blocks, n_heads=n_heads, embed_dim=embed_dim,
                             vocab_size=vocab_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    tokenizer = train_tokenizer(texts, vocab_size)
    generator = torch.Generator().manual_seed(seed)
    net = PlaidNet(config)
    net.init_weights(generator)
    schedule = NoiseSchedule()
    schedule.init_weights(generator)
    bounds = GammaBounds(gamma_0, gamma_1)
    embedding = EmbeddingMatrix(vocab_size, embed_dim)
    with torch.no_grad():
        embedding.matrix.copy_(torch.randn(embedding.matrix.shape, generator=generator))
    save_plaid(folder, net, schedule, bounds, embedding, tokenizer)
    logger.info("built tiny Plaid %s (tokenizer %d tokens) in %s", asdict(config),
                tokenizer.get_vocab_size(), folder)
    return Path(folder)


def save_plaid(folder: str | Path, net: PlaidNet, schedule: NoiseSchedule, bounds: GammaBounds,
               embedding: EmbeddingMatrix, tokenizer: Tokenizer, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write a Plaid model in the released layout (plus ``config.json`` and ``tokenizer.json``).

    Args:
        folder: output folder (created; existing files are replaced, each atomically).
        net, schedule, bounds, embedding: the four modules of the release's four files.
        tokenizer: saved as ``tokenizer.json``.
        dtype: floating dtype of the denoiser's tensors in ``model.pt`` (e.g. ``torch.float16`` to
            ship small files; the loader computes in float32). The schedule, bounds and embedding
            stay float32.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
                   for k, v in net.state_dict().items()}
    states = {MODEL_FILE: model_state}
    for file_name, module in ((SCHEDULE_FILE, schedule), (GAMMA_BOUNDS_FILE, bounds), (EMBEDDING_FILE, embedding)):
        states[file_name] = {k: v.detach().to("cpu", torch.float32) for k, v in module.state_dict().items()}
    for file_name, state in states.items():
        atomic_write(folder / file_name, lambda tmp, st=state: torch.save(st, tmp))
    config_text = json.dumps(asdict(net.config), indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(config_text))
    atomic_write(folder / TOKENIZER_FILE, lambda tmp: tokenizer.save(str(tmp)))
    return folder
