"""Plaid text backbone: tokeniser, noise schedule, noising and pooled block features.

Loading (:func:`load_plaid`) reads the released Plaid 1B layout, a folder with

* ``model.pt``, ``noise_schedule.pt``, ``gamma_bounds.pt``, ``embedding_matrix.pt``
  (``torch.save``'d state dicts, loaded with ``weights_only=True`` and strict key matching),
* optionally ``config.json`` (the :class:`PlaidConfig` fields; written for tiny models; when
  absent the configuration is inferred from the state-dict shapes),
* ``tokenizer.json`` (a Hugging Face ``tokenizers`` file; Plaid's is ``misc/owt2_tokenizer.json``
  of the Plaid repository), unless a tokenizer is passed.

:func:`build_tiny_plaid` writes a small random model in exactly that layout, so tests and the
embedded demo go through the same loading code as the real checkpoint.

Choices the paper leaves open (all recorded in :meth:`PlaidBackbone.settings`):

* Captions are tokenised without added special tokens, truncated to ``token_length`` tokens and
  padded with id 0 (end-of-text, Plaid's only special token). The mask marks the caption's own
  tokens; pads still take part in attention (Plaid has no attention mask), but pooling averages
  the caption's tokens only.
* Timestep ``t`` in ``[0, 1000)`` maps to continuous time ``t / 1000``.
* ``noising="ddim"`` (default, the paper's better text setting): deterministic DDIM inversion.
  ``z_0 = alpha(0) E[x]`` (no noise: Plaid's ``t = 0`` still has ``sigma^2`` around 0.05, so the
  "clean" start is defined without it), then steps of ``inversion_step`` timesteps along the grid
  ``0, s, 2s, ...``; a target ``t`` off that grid is one extra step from ``floor(t / s) * s``.
  Each step predicts ``x_hat = softmax(logits) @ E`` with a single pass, from the model's complete
  logits ``readout + (alpha / sigma^2) z . E^T`` (:meth:`PlaidNet.forward`: the z term is part of
  Plaid's prediction), with zero self-conditioning (as the original's first sampling step: one
  pass has no earlier prediction to feed back), then ``eps_hat = (z - alpha x_hat) / sigma`` and
  moves to ``z' = alpha' x_hat + sigma' eps_hat``.
  So ``z_t`` never depends on which other timesteps are requested, and all targets of a batch
  share one trajectory. The default step, 10, puts the paper's whole text grid {0, 10, 20, 30}
  on the trajectory. Each grid point goes through the net once: at a target the trajectory
  steps on from, that single full pass gives both the features (hooks) and the logits of the
  step, so the grid {0, 10, 20, 30} costs 4 passes per batch (full passes at 0, 10 and 20, and a
  pass at 30 that stops after the deepest requested block).
* ``noising="random"``: ``z_t = alpha(t) E[x] + sigma(t) eps`` with ``eps`` drawn per (seed, row
  id, timestep) by :func:`seeded_normal`.
* Pooling: mean of the residual stream after block ``b`` over the caption's tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Literal, cast

import torch
from tokenizers import Tokenizer

from difffeat_tune._defaults import DEFAULT_TEXT_NOISING
from difffeat_tune._device import autocast_dtype, resolve_device
from difffeat_tune._errors import BackboneError, ConfigError, DataError
from difffeat_tune.backbones._base import NUM_TIMESTEPS, Backbone, Encoded, InputStage, seeded_normal, weights_digest
from difffeat_tune.backbones._family import LoadOptions
from difffeat_tune.backbones._registry import family
from difffeat_tune.backbones._hooks import capture_blocks, masked_mean_pool
from difffeat_tune.backbones._plaid_files import (
    CONFIG_FILE,
    EMBEDDING_FILE,
    GAMMA_BOUNDS_FILE,
    MODEL_FILE,
    SCHEDULE_FILE,
    WEIGHT_FILES,
    WEIGHTS_HINT,
    build_tiny_plaid,
    read_release,
    save_plaid,
)
from difffeat_tune.backbones._plaid_net import (
    EmbeddingMatrix,
    GammaBounds,
    NoiseSchedule,
    PlaidConfig,
    PlaidNet,
    clean_prediction,
    schedule_dtype,
)
from difffeat_tune.backbones._plaid_tokenizer import (
    EOT_TOKEN,
    PAD_ID,
    TOKENIZER_FILE,
    load_tokenizer,
    own_tokenizer,
    train_tokenizer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE", "DEFAULT_INVERSION_STEP", "DEFAULT_MAX_PASS_ROWS", "DEFAULT_TOKEN_LENGTH", "EMBEDDING_FILE",
    "EOT_TOKEN", "FAMILY", "FEATURE_VERSION", "GAMMA_BOUNDS_FILE", "MODEL_FILE", "NOISING_MODES", "PAD_ID",
    "POOLING", "SCHEDULE_FILE", "TOKENIZER_FILE", "WEIGHT_FILES", "PlaidBackbone", "build_tiny_plaid",
    "load_plaid", "save_plaid", "train_tokenizer",
]

Noising = Literal["ddim", "random"]
#: ``(t, z_t, gamma per row) -> logits``: the pass at a target the DDIM trajectory steps on from.
TargetPass = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
NOISING_MODES: tuple[Noising, ...] = ("ddim", "random")

#: Defaults (see the module docstring for why).
DEFAULT_TOKEN_LENGTH = 60
DEFAULT_INVERSION_STEP = 10
DEFAULT_MAX_PASS_ROWS = 256
POOLING = "mean-real-tokens"
#: Version of the text-feature computation, part of every extraction key: bump it whenever a
#: change alters text features, so stores computed before are re-extracted, never read.
#: 2: the DDIM prediction includes the z term of Plaid's logits (1 used the readout alone).
FEATURE_VERSION = 2

class PlaidBackbone(Backbone):
    """Pooled block features of a Plaid text diffusion Transformer.

    Build it with :func:`load_plaid`. Blocks are numbered 1..``n_blocks``; timesteps are integers
    in ``[0, 1000)`` mapped to continuous time ``t / 1000``.

    Args:
        net: the denoiser, on ``device``.
        schedule: the noise schedule (kept on CPU, float64).
        bounds: ``gamma_0`` and ``gamma_1``.
        embedding: the token embedding matrix.
        tokenizer: a Hugging Face tokenizer whose id 0 is end-of-text (copied; its padding and
            truncation are turned off).
        device: where features are computed and returned.
        token_length: fixed caption length L (truncate, or pad with id 0).
        noising: ``"ddim"`` (deterministic inversion) or ``"random"`` (seeded Gaussian noise).
        inversion_step: DDIM step in timesteps (trajectory ``0, s, 2s, ...``).
        noise_seed: seed of the random noise (``noising="random"`` only).
        max_pass_rows: several timesteps share one forward pass while the pass holds at most
            this many rows (always at least one timestep per pass).
        name: display name; default ``"plaid-1b"`` for the 1B configuration, else
            ``"plaid-<dim>x<n_blocks>"``.

    Raises:
        ConfigError: an option is out of range.
        BackboneError: the tokenizer does not fit the model.
    """

    modality = "text"
    num_timesteps = NUM_TIMESTEPS

    def __init__(
        self,
        net: PlaidNet,
        schedule: NoiseSchedule,
        bounds: GammaBounds,
        embedding: EmbeddingMatrix,
        tokenizer: Tokenizer,
        *,
        device: torch.device,
        token_length: int = DEFAULT_TOKEN_LENGTH,
        noising: Noising = DEFAULT_TEXT_NOISING,
        inversion_step: int = DEFAULT_INVERSION_STEP,
        noise_seed: int = 0,
        max_pass_rows: int = DEFAULT_MAX_PASS_ROWS,
        name: str | None = None,
    ) -> None:
        _check_options(token_length, noising, inversion_step, noise_seed, max_pass_rows)
        self.config: PlaidConfig = net.config
        self.device = device
        self.net = net.to(device).eval().requires_grad_(False)
        self.schedule = schedule.to("cpu", torch.float64).eval().requires_grad_(False)
        self.bounds = bounds.to("cpu", torch.float64).eval().requires_grad_(False)
        self.embedding = embedding.eval().requires_grad_(False)
        self.tokenizer = own_tokenizer(tokenizer)
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if vocab > self.config.vocab_size:
            raise BackboneError(
                f"tokenizer has {vocab} tokens but the Plaid model only {self.config.vocab_size}",
                "use the tokenizer the model was trained with",
            )
        self.token_length = token_length
        self.noising: Noising = noising
        self.inversion_step = inversion_step
        self.noise_seed = noise_seed
        self.max_pass_rows = max_pass_rows
        self.name = name or ("plaid-1b" if self.config == PlaidConfig.plaid_1b() else
                             f"plaid-{self.config.dim}x{self.config.n_blocks}")
        self.num_blocks = self.config.n_blocks
        self.width = self.config.dim
        self._embeddings = embedding.normalized().detach().to(device)
        self._tokenizer_hash = hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]
        self._fingerprint: str | None = None

    @property
    def normalized_embeddings(self) -> torch.Tensor:
        """The row-normalised embedding matrix ``E`` ``[vocab, embed_dim]`` on :attr:`device`."""
        return self._embeddings

    # ------------------------------------------------------------------ identity

    def settings(self) -> dict[str, object]:
        """Every extraction setting that changes the features.

        ``inversion_step`` is ``None`` under random noising and ``noise_seed`` is ``None`` under
        DDIM noising (they have no effect there, so they must not split a feature cache).
        """
        autocast = autocast_dtype(self.device)
        return {
            "token_length": self.token_length,
            "noising": self.noising,
            "inversion_step": self.inversion_step if self.noising == "ddim" else None,
            "noise_seed": self.noise_seed if self.noising == "random" else None,
            "pooling": POOLING,
            "tokenizer": self._tokenizer_hash,
            "time": "t/1000",
            "feature_version": FEATURE_VERSION,
            "precision": "float32" if autocast is None else f"autocast-{str(autocast).removeprefix('torch.')}",
        }

    def fingerprint(self) -> str:
        """A hash of the configuration, denoiser, schedule, gamma bounds and embedding matrix."""
        if self._fingerprint is None:
            payload = {
                "architecture": "plaid",
                "config": asdict(self.config),
                "model": weights_digest(self.net),
                "noise_schedule": weights_digest(self.schedule),
                "gamma_bounds": [repr(float(self.bounds.gamma_0)), repr(float(self.bounds.gamma_1))],
                "embedding_matrix": weights_digest(self.embedding),
            }
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            self._fingerprint = digest[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ tokens

    def tokenize(
        self, captions: Sequence[str], ids: Sequence[str], split_name: str = "?"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``long [B, L]`` and real-token mask ``bool [B, L]`` (on CPU).

        Args:
            captions: one caption per row.
            ids: the rows' ids (named in errors).
            split_name: the split's name (named in errors).

        Raises:
            DataError: a caption is empty, whitespace only, or not a string.
        """
        return _tokenized(self.tokenizer, self.token_length, captions, ids, split_name)

    def input_stage(self) -> InputStage:
        """Captions tokenised: ``{"tokens": long [B, L], "mask": bool [B, L]}`` (on CPU)."""
        return InputStage("text", partial(_token_batch, self.tokenizer, self.token_length))

    # ------------------------------------------------------------------ schedule and noising

    def schedule_at(self, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gamma, alpha, sigma)`` float64 ``[len(timesteps)]`` on CPU at times ``t / 1000``."""
        with torch.inference_mode():
            t = torch.tensor([float(s) for s in timesteps], dtype=torch.float64) / self.num_timesteps
            gamma = self.bounds(self.schedule(t))
            return gamma, torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()

    def noisy_embeddings(self, batch: Encoded, timesteps: Sequence[int]) -> dict[int, torch.Tensor]:
        """The noisy inputs ``{t: z_t float32 [B, L, embed_dim]}`` that :meth:`features` uses."""
        self.validate(timesteps, [])
        tokens, _ = self._batch_tensors(batch)
        with torch.inference_mode(), self._autocast():
            noisy = self._noisy(batch.ids, tokens, sorted(set(timesteps)))
        return {t: z.clone() for t, z in noisy.items()}

    def _noisy(
        self,
        ids: Sequence[str],
        tokens: torch.Tensor,
        timesteps: list[int],
        target_pass: TargetPass | None = None,
    ) -> dict[int, torch.Tensor]:
        x0 = self._embeddings[tokens]
        if not timesteps:
            return {}
        _, alphas, sigmas = self.schedule_at(timesteps)
        if self.noising == "random":
            out = {}
            for t, alpha, sigma in zip(timesteps, alphas.tolist(), sigmas.tolist(), strict=True):
                eps = seeded_normal(ids, t, x0.shape[1:], self.noise_seed, self.device)
                out[t] = alpha * x0 + sigma * eps
            return out
        return self._ddim(x0, timesteps, target_pass)

    def _ddim(
        self, x0: torch.Tensor, timesteps: list[int], target_pass: TargetPass | None = None
    ) -> dict[int, torch.Tensor]:
        """DDIM inversion on the grid ``0, s, 2s, ...``, branching once to off-grid targets.

        Every grid point ``g`` the trajectory steps from goes through the net once, for its logits.
        When ``g`` is also a target and ``target_pass`` is given, that pass is
        ``target_pass(g, z_g, gamma_rows)``, which must return the net's logits (it can read the
        features on the way); other grid points get a plain ``self.net`` pass. ``target_pass`` is
        never called for a target whose ``z`` feeds no step (the end of the trajectory, or an
        off-grid target), so callers can stop those passes early. ``z_t`` does not depend on
        ``target_pass`` or on the other targets.

        Returns:
            ``{t: z_t}`` for every target.
        """
        step = self.inversion_step
        targets = set(timesteps)
        last_grid = max(targets) // step * step
        grid = list(range(0, last_grid + 1, step))
        needed = sorted(targets.union(grid))
        gammas, alphas, sigmas = (v.tolist() for v in self.schedule_at(needed))
        coef = {t: (g, a, s) for t, g, a, s in zip(needed, gammas, alphas, sigmas, strict=True)}
        out: dict[int, torch.Tensor] = {}
        z = coef[0][1] * x0
        for g in grid:
            if g in targets:
                out[g] = z
            branches = sorted(t for t in targets if t // step * step == g and t != g)
            if not branches and g == last_grid:
                break
            gamma_rows = self._gamma_rows([coef[g][0]], z.shape[0])
            if g in targets and target_pass is not None:
                logits = target_pass(g, z, gamma_rows)
            else:
                logits = self.net(z, gamma_rows, self._embeddings)
            x_hat, eps_hat = self._predict(z, logits, *coef[g][1:])
            for t in branches:
                out[t] = coef[t][1] * x_hat + coef[t][2] * eps_hat
            if g < last_grid:
                z = coef[g + step][1] * x_hat + coef[g + step][2] * eps_hat
        return out

    def _predict(
        self, z: torch.Tensor, logits: torch.Tensor, alpha: float, sigma: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean-embedding prediction ``x_hat`` from the net's complete ``logits`` at ``z``, and ``eps_hat``."""
        x_hat = clean_prediction(logits, self._embeddings)
        return x_hat, (z.float() - alpha * x_hat) / sigma

    def _gamma_rows(self, gammas: Sequence[float], size: int) -> torch.Tensor:
        """``gamma`` per row ``[len(gammas) * size]``: each value repeated for ``size`` rows."""
        return torch.tensor(
            [g for g in gammas for _ in range(size)], dtype=schedule_dtype(self.device)
        ).to(self.device)

    # ------------------------------------------------------------------ features

    def features(
        self, batch: Encoded, timesteps: Sequence[int], blocks: Sequence[int]
    ) -> dict[int, dict[int, torch.Tensor]]:
        """Pooled features ``{t: {b: float32 [B, dim]}}`` on :attr:`device`.

        Each noisy ``z_t`` goes through the net once. Under DDIM noising, a target on the
        trajectory that the inversion steps on from (``0, 10, 20`` of ``{0, 10, 20, 30}``) runs
        the whole net once, with hooks: that pass gives both its features and the logits of the
        next step. The other targets (the end of the trajectory, off-grid targets, and every
        target under random noising) stop after the deepest requested block, and are
        concatenated into one pass while it holds at most ``max_pass_rows`` rows. So
        ``{0, 10, 20, 30}`` with step 10 costs 4 passes per batch (3 inversion steps plus 4
        feature passes would be 7).

        Raises:
            BackboneError: a timestep or block is out of range, or no block is requested.
        """
        ts, wanted = self.request(timesteps, blocks)
        tokens, mask = self._batch_tensors(batch)
        size = tokens.shape[0]
        if size == 0:
            return self.no_rows(ts, wanted)
        out: dict[int, dict[int, torch.Tensor]] = {}
        pool = masked_mean_pool(mask)

        def target_pass(t: int, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
            # A target the trajectory steps on from: the whole net, features read on the way.
            with capture_blocks(self.net.blocks, wanted, pool, stop=False) as capture:
                out[t] = capture.run(lambda: self.net(z, gamma, self._embeddings))
            return cast(torch.Tensor, capture.output)

        with torch.inference_mode(), self._autocast():
            noisy = self._noisy(batch.ids, tokens, sorted(set(ts)), target_pass)
            rest = [t for t in ts if t not in out]
            gammas = dict(zip(rest, self.schedule_at(rest)[0].tolist(), strict=True)) if rest else {}
            per_pass = max(1, self.max_pass_rows // size)
            for start in range(0, len(rest), per_pass):
                chunk = rest[start : start + per_pass]
                z = torch.cat([noisy[t] for t in chunk])
                gamma = self._gamma_rows([gammas[t] for t in chunk], size)
                chunk_pool = pool if len(chunk) == 1 else masked_mean_pool(mask.repeat(len(chunk), 1))
                with capture_blocks(self.net.blocks, wanted, chunk_pool) as capture:
                    pooled = capture.run(lambda z=z, gamma=gamma: self.net(z, gamma, self._embeddings))
                for j, t in enumerate(chunk):
                    out[t] = {b: pooled[b][j * size : (j + 1) * size] for b in wanted}
        # Cloned outside inference mode: ordinary tensors (usable in autograd), not views of a pass.
        return {t: {b: v.float().clone() for b, v in out[t].items()} for t in ts}

    # ------------------------------------------------------------------ helpers

    def _batch_tensors(self, batch: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            tokens, mask = batch.tensors["tokens"], batch.tensors["mask"]
        except KeyError as exc:
            raise BackboneError(
                f"batch lacks {exc.args[0]!r}: it was not encoded by a text backbone",
                "prepare batches with PlaidBackbone.encode",
            ) from None
        if tokens.dim() != 2 or mask.shape != tokens.shape or tokens.shape[0] != len(batch.ids):
            raise BackboneError(
                f"batch tensors do not match: tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}, "
                f"{len(batch.ids)} ids"
            )
        return tokens.to(self.device), mask.to(self.device)

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        dtype = autocast_dtype(self.device)
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)


# ---------------------------------------------------------------------- loading


def _tokenized(tokenizer: Tokenizer, token_length: int, captions: Sequence[str], ids: Sequence[str],
               split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`PlaidBackbone.tokenize` with the tokenizer and length given."""
    for row_id, caption in zip(ids, captions, strict=True):
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(
                f"split {split_name!r}: caption of row id {row_id!r} is empty",
                "give every row a non-empty caption, or remove the row",
            )
    length = token_length
    tokens = torch.full((len(captions), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(captions), length), dtype=torch.bool)
    truncated = 0
    for i, (row_id, enc) in enumerate(
        zip(ids, tokenizer.encode_batch(list(captions), add_special_tokens=False), strict=True)
    ):
        token_ids = enc.ids
        if not token_ids:
            raise DataError(
                f"split {split_name!r}: caption of row id {row_id!r} gives no tokens",
                "give every row a caption the tokenizer can encode, or remove the row",
            )
        truncated += len(token_ids) > length
        token_ids = token_ids[:length]
        tokens[i, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
        mask[i, : len(token_ids)] = True
    if truncated:
        logger.debug("%d of %d captions truncated to %d tokens", truncated, len(captions), length)
    return tokens, mask


def _token_batch(tokenizer: Tokenizer, token_length: int, captions: list[str], ids: tuple[str, ...],
                 split_name: str) -> dict[str, torch.Tensor]:
    """Plaid's input stage: a batch's captions tokenised."""
    tokens, mask = _tokenized(tokenizer, token_length, captions, ids, split_name)
    return {"tokens": tokens, "mask": mask}


def load_plaid(
    folder: str | Path,
    tokenizer: str | Path | Tokenizer | None = None,
    *,
    device: str | torch.device | None = None,
    token_length: int = DEFAULT_TOKEN_LENGTH,
    noising: Noising = DEFAULT_TEXT_NOISING,
    inversion_step: int = DEFAULT_INVERSION_STEP,
    noise_seed: int = 0,
    max_pass_rows: int = DEFAULT_MAX_PASS_ROWS,
    name: str | None = None,
) -> PlaidBackbone:
    """Load a Plaid model from a folder in the released layout.

    Args:
        folder: holds ``model.pt``, ``noise_schedule.pt``, ``gamma_bounds.pt``,
            ``embedding_matrix.pt``, optionally ``config.json``, and ``tokenizer.json`` unless
            ``tokenizer`` is given.
        tokenizer: a ``tokenizers`` JSON file or a loaded :class:`~tokenizers.Tokenizer`;
            default ``<folder>/tokenizer.json``.
        device: ``None``/``"auto"`` (CUDA if present), or a device.
        token_length: caption length L in tokens (the paper: 60 on COCO, 600 on VG).
        noising: ``"ddim"`` (deterministic inversion) or ``"random"``.
        inversion_step: DDIM step in timesteps (default 10: see the module docstring).
        noise_seed: seed of the random noise (``noising="random"``).
        max_pass_rows: rows per forward pass when timesteps share a pass.
        name: display name (see :class:`PlaidBackbone`).

    Returns:
        The backbone, on the resolved device.

    Raises:
        BackboneError: a file is missing or does not match the architecture.
        ConfigError: an option or the device is invalid.
    """
    _check_options(token_length, noising, inversion_step, noise_seed, max_pass_rows)
    resolved = resolve_device(device)
    folder = Path(folder)
    net, schedule, bounds, embedding = read_release(folder, resolved)
    tok = load_tokenizer(folder, tokenizer)
    backbone = PlaidBackbone(
        net, schedule, bounds, embedding, tok, device=resolved, token_length=token_length, noising=noising,
        inversion_step=inversion_step, noise_seed=noise_seed, max_pass_rows=max_pass_rows, name=name,
    )
    logger.info(
        "loaded %s from %s (dim %d, %d blocks, gamma %.3f..%.3f) on %s",
        backbone.name, folder, net.config.dim, net.config.n_blocks,
        float(bounds.gamma_0), float(bounds.gamma_1), resolved,
    )
    return backbone


def _check_options(
    token_length: int, noising: str, inversion_step: int, noise_seed: int, max_pass_rows: int
) -> None:
    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(token_length):
        raise ConfigError(f"token_length must be a positive integer, got {token_length!r}")
    if noising not in NOISING_MODES:
        raise ConfigError(f"unknown text noising {noising!r}", f"choose one of {', '.join(NOISING_MODES)}")
    if not positive_int(inversion_step):
        raise ConfigError(f"inversion_step must be a positive integer, got {inversion_step!r}")
    if not isinstance(noise_seed, int) or isinstance(noise_seed, bool):
        raise ConfigError(f"noise_seed must be an integer, got {noise_seed!r}")
    if not positive_int(max_pass_rows):
        raise ConfigError(f"max_pass_rows must be a positive integer, got {max_pass_rows!r}")




def load_family(source: str, options: LoadOptions) -> PlaidBackbone:
    """The family's loader (``FAMILY_TABLE``): :func:`load_plaid` with the load options."""
    folder = Path(source).expanduser()
    if not folder.exists():
        raise BackboneError(f"text backbone {source!r} is not an existing folder", WEIGHTS_HINT)
    return load_plaid(
        folder, options.tokenizer, device=options.device,
        token_length=options.token_length or DEFAULT_TOKEN_LENGTH, noising=options.text_noising,  # type: ignore[arg-type]
        inversion_step=options.inversion_step or DEFAULT_INVERSION_STEP, noise_seed=options.noise_seed,
    )


#: The Plaid family (``plaid:FOLDER``; a plain text backbone folder means this family).
FAMILY = family("text", "plaid")
