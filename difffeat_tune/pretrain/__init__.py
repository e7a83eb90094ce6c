"""Pretraining of the tiny backbones the package ships (``experiments/train_tiny.py`` runs it).

The autoencoder, the DiT and the Plaid model are trained from seeds on a pretraining corpus that
the shapes generator draws from random streams no data set split uses; see
:func:`train_tiny_backbones` and each trainer's module for the recipe and what it simplifies.
Every trainer saves resumable checkpoints (:class:`Checkpoints`).
"""

from __future__ import annotations

from difffeat_tune.pretrain._checkpoint import Checkpoints
from difffeat_tune.pretrain._dit import DiTRecipe, build_dit, dit_loss, train_dit
from difffeat_tune.pretrain._plaid import PlaidRecipe, build_plaid_modules, plaid_loss, train_plaid
from difffeat_tune.pretrain._tiny import TinyRecipe, file_digests, make_corpus, train_tiny_backbones
from difffeat_tune.pretrain._vae import VAERecipe, build_vae, train_vae, vae_loss

__all__ = [
    "Checkpoints",
    "DiTRecipe",
    "PlaidRecipe",
    "TinyRecipe",
    "VAERecipe",
    "build_dit",
    "build_plaid_modules",
    "build_vae",
    "dit_loss",
    "file_digests",
    "make_corpus",
    "plaid_loss",
    "train_dit",
    "train_plaid",
    "train_tiny_backbones",
    "train_vae",
    "vae_loss",
]
