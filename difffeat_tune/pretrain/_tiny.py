"""Pretrain the tiny backbones the package ships, from seeds, on a CPU.

:func:`train_tiny_backbones` draws a pretraining corpus from the shapes generator with random
streams no data set split uses (:func:`~difffeat_tune.data.shapes.generate_corpus`), then trains

1. the autoencoder (``AutoencoderKL`` layout) on the corpus images,
2. the DiT (DiT-XL/2's depth) on their latents (and those of the flipped images),
3. a byte-level BPE tokenizer and the Plaid model (Plaid 1B's depth) on the corpus captions, plain
   and with the COCO-enhanced sentences,

and writes ``tiny-dit/`` (a DiTPipeline folder: ``transformer/``, ``vae/``, ``scheduler/``) and
``tiny-plaid/`` (Plaid's release files, ``config.json`` and ``tokenizer.json``), which
:func:`~difffeat_tune.backbones.dit.load_dit` and :func:`~difffeat_tune.backbones.plaid.load_plaid`
read like the real checkpoints, plus ``digests.json`` (the SHA-256 of every file). Weights are
stored in float16 where that does not change the features meaningfully (the transformers); the
VAE, the schedule, the gamma bounds and the embedding matrix stay float32.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from difffeat_tune._errors import ConfigError
from difffeat_tune._io import atomic_write_json
from difffeat_tune.backbones.plaid import PAD_ID, save_plaid, train_tokenizer
from difffeat_tune.data.shapes import ShapesCorpus, generate_corpus
from difffeat_tune.pretrain._checkpoint import Checkpoints
from difffeat_tune.pretrain._dit import DiTRecipe, ddpm_scheduler, train_dit
from difffeat_tune.pretrain._plaid import PlaidRecipe, train_plaid
from difffeat_tune.pretrain._vae import VAERecipe, encode_mean, train_vae

logger = logging.getLogger(__name__)

#: ``log(stage, step, values)``: progress of every stage.
StageLog = Callable[[str, int, dict[str, float]], None]
#: Names of the written folders and of the digest file.
DIT_FOLDER, PLAID_FOLDER, DIGESTS = "tiny-dit", "tiny-plaid", "digests.json"


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that decides the shipped tiny weights.

    Attributes:
        corpus_images: images (and captions) in the pretraining corpus.
        corpus_seed: the corpus's seed (its streams never meet a data set split's).
        corpus_chunks: independent corpus pieces, generated in parallel processes.
        vocab_size: tokenizer and Plaid vocabulary.
        token_length: caption length the text model trains on (padded with end-of-text).
        vae, dit, plaid: the three trainings.
    """

    corpus_images: int = 24000
    corpus_seed: int = 0
    corpus_chunks: int = 4
    vocab_size: int = 1024
    token_length: int = 48
    vae: VAERecipe = field(default_factory=VAERecipe)
    dit: DiTRecipe = field(default_factory=DiTRecipe)
    plaid: PlaidRecipe = field(default_factory=PlaidRecipe)


def _chunk(args: tuple[int, int, int]) -> ShapesCorpus:
    n, seed, chunk = args
    return generate_corpus(n, seed=seed, chunk=chunk)


def make_corpus(recipe: TinyRecipe, workers: int = 2) -> ShapesCorpus:
    """The pretraining corpus, generated in ``corpus_chunks`` pieces by up to ``workers`` processes."""
    sizes = [recipe.corpus_images // recipe.corpus_chunks] * recipe.corpus_chunks
    sizes[-1] += recipe.corpus_images - sum(sizes)
    jobs = [(n, recipe.corpus_seed, i) for i, n in enumerate(sizes)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    else:
        parts = [_chunk(job) for job in jobs]
    return ShapesCorpus(
        pixels=np.concatenate([p.pixels for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        captions=tuple(c for p in parts for c in p.captions),
        enhanced_captions=tuple(c for p in parts for c in p.enhanced_captions),
    )


def tokenize_padded(tokenizer: object, texts: list[str], length: int) -> torch.Tensor:
    """Token ids ``[N, length]``: truncated, padded with end-of-text (id 0), no special tokens."""
    ids = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
    for i, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):  # type: ignore[attr-defined]
        row = encoding.ids[:length]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DIGESTS}


def _image_stage(out: Path, corpus: ShapesCorpus, recipe: TinyRecipe, log: StageLog,
                 checkpoints: Checkpoints | None = None) -> dict[str, object]:
    """The autoencoder, then the DiT on its latents; writes ``tiny-dit/``."""
    seconds: dict[str, float] = {}
    losses: dict[str, dict[str, float]] = {}

    def stage_log(stage: str) -> Callable[[int, dict[str, float]], None]:
        def each(step: int, values: dict[str, float]) -> None:
            losses[stage] = values
            log(stage, step, values)
        return each

    start = time.perf_counter()
    vae = train_vae(corpus.pixels, recipe.vae, log=stage_log("vae"), checkpoints=checkpoints)
    seconds["vae"] = time.perf_counter() - start
    start = time.perf_counter()
    scale = float(vae.config.scaling_factor)
    latents = torch.cat([encode_mean(vae, corpus.pixels), encode_mean(vae, corpus.pixels, flip=True)]) * scale
    seconds["latents"] = time.perf_counter() - start
    start = time.perf_counter()
    dit = train_dit(latents, recipe.dit, log=stage_log("dit"), checkpoints=checkpoints)
    seconds["dit"] = time.perf_counter() - start
    folder = out / DIT_FOLDER
    dit.half().save_pretrained(folder / "transformer")  # float16 files; loaded as float32
    vae.save_pretrained(folder / "vae")
    ddpm_scheduler().save_pretrained(folder / "scheduler")
    return {"seconds": seconds, "losses": losses}


def _text_stage(out: Path, corpus: ShapesCorpus, recipe: TinyRecipe, log: StageLog,
                checkpoints: Checkpoints | None = None) -> dict[str, object]:
    """The tokenizer, then the Plaid model on the captions (plain and enhanced); writes ``tiny-plaid/``."""
    losses: dict[str, dict[str, float]] = {}

    def each(step: int, values: dict[str, float]) -> None:
        losses["plaid"] = values
        log("plaid", step, values)

    start = time.perf_counter()
    texts = [*corpus.captions, *corpus.enhanced_captions]
    tokenizer = train_tokenizer(texts, recipe.vocab_size)
    tokens = tokenize_padded(tokenizer, texts, recipe.token_length)
    modules = train_plaid(tokens, recipe.vocab_size, recipe.plaid, log=each, checkpoints=checkpoints)
    save_plaid(out / PLAID_FOLDER, modules.net, modules.schedule, modules.bounds, modules.embedding, tokenizer,
               dtype=torch.float16)
    return {"seconds": {"plaid": time.perf_counter() - start}, "losses": losses}


def _in_child(stage: Callable[..., dict[str, object]], results: object, *args: object) -> None:
    torch.set_num_threads(1)  # two stages on two cores: tiny models gain nothing from more threads
    try:
        results.put((stage.__name__, stage(*args)))  # type: ignore[attr-defined]
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        results.put((stage.__name__, exc))  # type: ignore[attr-defined]


#: The stages by name: each writes one backbone folder.
STAGES: dict[str, Callable[[Path, ShapesCorpus, TinyRecipe, StageLog, Checkpoints | None], dict[str, object]]] = {
    "image": _image_stage, "text": _text_stage}


def train_tiny_backbones(out: str | Path, recipe: TinyRecipe | None = None, *, log: StageLog | None = None,
                         workers: int = 2, stages: tuple[str, ...] = ("image", "text"),
                         checkpoints: Checkpoints | None = None) -> dict[str, object]:
    """Train the tiny backbones and write them under ``out`` (see the module docstring).

    With ``workers`` >= 2 (and ``fork`` available) the image stages (autoencoder, DiT) and the
    text stage (Plaid) run at the same time in two processes of one thread each: these small
    models gain little from a second thread, so the two-core run takes the longer stage's time,
    not the sum.

    Args:
        out: the output folder (``tiny-dit/``, ``tiny-plaid/`` and ``digests.json`` go there).
        recipe: the recipe (default ``TinyRecipe()``, the shipped weights').
        log: progress callback (called in the stages' processes).
        workers: processes generating the corpus and running the stages.
        stages: which backbones to train (``"image"``, ``"text"``); the others' folders in
            ``out`` are kept, and the digests cover every backbone folder ``out`` holds.
        checkpoints: where the stages save their state every few minutes (and resume from it,
            if its ``resume`` is set); ``None`` saves nothing.

    Returns:
        A record of the run: the recipe, the seconds of each stage, the last losses and the digests.
    """
    recipe = recipe or TinyRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda stage, step, values: logger.info("%s %d %s", stage, step, values))
    record: dict[str, object] = {"recipe": asdict(recipe), "seconds": {}, "losses": {}}
    seconds: dict[str, float] = record["seconds"]  # type: ignore[assignment]
    losses: dict[str, dict[str, float]] = record["losses"]  # type: ignore[assignment]

    start = time.perf_counter()
    corpus = make_corpus(recipe, workers)
    seconds["corpus"] = time.perf_counter() - start
    log("corpus", len(corpus.pixels), {"seconds": seconds["corpus"]})

    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise ConfigError(f"unknown or no stage(s) {unknown or list(stages)}", f"use some of {', '.join(STAGES)}")
    chosen = [STAGES[name] for name in stages]
    if workers >= 2 and len(chosen) >= 2 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")  # the children share the corpus, nothing is copied
        results = context.SimpleQueue()
        children = [context.Process(target=_in_child, args=(stage, results, out, corpus, recipe, log, checkpoints))
                    for stage in chosen]
        for child in children:
            child.start()
        done = dict(results.get() for _ in children)
        for child in children:
            child.join()
    else:
        done = {stage.__name__: stage(out, corpus, recipe, log, checkpoints) for stage in chosen}
    for name, result in done.items():
        if isinstance(result, BaseException):
            raise RuntimeError(f"tiny backbone training failed in {name}") from result
        seconds.update(result["seconds"])  # type: ignore[arg-type]
        losses.update(result["losses"])  # type: ignore[arg-type]

    record["digests"] = {name: file_digests(out / name) for name in (DIT_FOLDER, PLAID_FOLDER)
                         if (out / name).is_dir()}
    atomic_write_json(out / DIGESTS, record["digests"])
    return record


__all__ = ["DIGESTS", "DIT_FOLDER", "PLAID_FOLDER", "TinyRecipe", "file_digests", "make_corpus",
           "tokenize_padded", "train_tiny_backbones"]
