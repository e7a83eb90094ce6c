"""The trained tiny backbones the package ships: intact, loaded by the public loaders, used by default."""

from __future__ import annotations

import json

import torch

from difffeat_tune.backbones._registry import load_backbone, shipped_folder, tiny_folder
from difffeat_tune.backbones.dit import load_dit
from difffeat_tune.backbones.plaid import load_plaid
from difffeat_tune.pretrain._tiny import DIGESTS, DIT_FOLDER, PLAID_FOLDER, file_digests

#: The issue's limit on the committed weights.
MAX_BYTES = 30 * 10**6


def test_the_shipped_files_match_their_recorded_digests_and_stay_small() -> None:
    weights = shipped_folder("image").parent
    recorded = json.loads((weights / DIGESTS).read_text())
    assert set(recorded) == {DIT_FOLDER, PLAID_FOLDER}
    for name, files in recorded.items():
        assert file_digests(weights / name) == files  # every file listed, none changed, none extra
    assert sum(p.stat().st_size for p in weights.rglob("*") if p.is_file()) <= MAX_BYTES


def test_the_public_loaders_load_the_shipped_backbones_in_the_real_layouts() -> None:
    dit = load_dit(shipped_folder("image"), device="cpu")
    plaid = load_plaid(shipped_folder("text"), device="cpu")
    assert dit.num_blocks == 28 and plaid.num_blocks == 24  # DiT-XL/2's and Plaid 1B's depths
    assert dit.transformer.config.num_embeds_ada_norm == 1000  # + the null class 1000 used at extraction
    # float16 on disk, float32 in memory
    assert all(p.dtype == torch.float32 for p in dit.transformer.parameters())
    assert {t.dtype for t in torch.load(shipped_folder("text") / "model.pt", map_location="cpu").values()} == {
        torch.float16}


def test_tiny_means_the_shipped_weights() -> None:
    assert tiny_folder("image") == shipped_folder("image") and tiny_folder("text") == shipped_folder("text")
    assert load_backbone("tiny", "image").name == "tiny-dit"
    assert load_backbone("tiny", "text").name == "tiny-plaid"
