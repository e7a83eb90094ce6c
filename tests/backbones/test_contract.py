"""The contract every backbone family of ``FAMILY_TABLE`` keeps, checked on one tiny model per family.

The models are the entries of :data:`tests.backbones.tiny_models.TINY_MODELS`, saved locally in
each family's checkpoint layout. A family added to ``FAMILY_TABLE`` without an entry there fails
:func:`test_every_family_of_the_table_has_a_tiny_model` and the per-family error checks below.
What only one family does (its manual forward reference, its files, its conditioning cache)
is tested beside it, in ``test_<family>.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from difffeat_tune._errors import BackboneError, DataError
from difffeat_tune.backbones._base import Backbone, Encoded
from difffeat_tune.backbones._registry import FAMILY_TABLE, load_backbone
from tests.backbones.tiny_models import TINY_MODELS, TinyModel, TinyModels
from tests.backbones.tiny_parts import count_calls
from tests.conftest import make_split

ROWS = 3
DIFFUSION = [name for name, m in TINY_MODELS.items() if m.diffusion]
ENCODERS = [name for name, m in TINY_MODELS.items() if not m.diffusion]
#: Which families' code cannot give the features of an empty batch (none: the DiT and latent
#: families and the text encoders failed until they returned no rows without a forward pass).
EMPTY_BATCH_FAILS: dict[str, str] = {}

#: Families whose fingerprint changes between two loads of one folder (none: the bert family drops
#: the pooler a masked-LM checkpoint lacks, which transformers would draw at random).
FINGERPRINT_FAILS: dict[str, str] = {}
#: Families whose missing-folder message names no download command (none).
MISSING_FOLDER_FAILS: dict[tuple[str, str], str] = {}


def _known_defect(request: pytest.FixtureRequest, reason: str | None) -> None:
    """Mark the running case as an expected failure of the code under test (strict: it must fail)."""
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _family_id(key: tuple[str, str]) -> str:
    return f"{key[0]}-{key[1]}"


def _first_model(key: tuple[str, str]) -> TinyModel:
    """The family's first tiny model; none is a failure that names where to add one."""
    for model in TINY_MODELS.values():
        if model.key == key:
            return model
    pytest.fail(f"backbone family {key[1]!r} ({key[0]}) of FAMILY_TABLE has no tiny model: add a TinyModel "
                "entry for it to tests/backbones/tiny_models.py")


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def model(request: pytest.FixtureRequest) -> TinyModel:
    return TINY_MODELS[request.param]


@pytest.fixture(scope="module")
def backbone(model: TinyModel, tiny_models: TinyModels) -> Backbone:
    return tiny_models.backbone(model.name)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> Encoded:
    return backbone.encode(make_split("train", ROWS), range(ROWS))


@pytest.fixture(scope="module")
def every_block(model: TinyModel, backbone: Backbone, batch: Encoded) -> dict[int, dict[int, torch.Tensor]]:
    """Features of every block at the model's timesteps (one request, shared by the checks that read it)."""
    return backbone.features(batch, model.timesteps, list(range(1, backbone.num_blocks + 1)))


def _modules(backbone: Backbone) -> dict[str, nn.Module]:
    """The torch modules a backbone holds (denoiser, VAE, text model, schedule...)."""
    return {name: value for name, value in vars(backbone).items() if isinstance(value, nn.Module)}


def _hooks(backbone: Backbone) -> set[tuple[str, str, int]]:
    """Every forward hook and pre-hook on the backbone's modules (the library may keep its own)."""
    return {(f"{owner}.{name}", kind, key) for owner, module in _modules(backbone).items()
            for name, sub in module.named_modules()
            for kind, hooks in (("hook", sub._forward_hooks), ("pre-hook", sub._forward_pre_hooks)) for key in hooks}


@contextmanager
def _failing_at(block: nn.Module) -> Iterator[None]:
    """Make ``block`` raise when it runs (a forward pre-hook, removed afterwards)."""
    def fail(_module: nn.Module, _args: object) -> None:
        raise RuntimeError("a block failed")

    handle = block.register_forward_pre_hook(fail)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("key", list(FAMILY_TABLE), ids=_family_id)
def test_every_family_of_the_table_has_a_tiny_model(key: tuple[str, str]) -> None:
    assert _first_model(key).family is FAMILY_TABLE[key]


# ------------------------------------------------------------------------------------- loading


def test_loads_from_a_local_folder_through_the_family_table(model: TinyModel, backbone: Backbone) -> None:
    blocks = model.blocks(backbone)
    assert backbone.modality == model.key[0]
    assert backbone.num_blocks == len(blocks) >= 2 and backbone.num_timesteps == 1000
    widths = backbone.block_widths()
    assert list(widths) == list(range(1, backbone.num_blocks + 1)) and backbone.width == max(widths.values())
    assert backbone.device == torch.device("cpu")
    assert re.fullmatch(r"[0-9a-f]{16}", backbone.fingerprint())
    json.dumps(backbone.settings())  # settings are recorded in every extraction key


def test_reloading_the_saved_folder_by_its_family_name_gives_identical_weights_and_features(
    model: TinyModel, backbone: Backbone, batch: Encoded, every_block: dict[int, dict[int, torch.Tensor]],
    tiny_models: TinyModels, request: pytest.FixtureRequest,
) -> None:
    _known_defect(request, FINGERPRINT_FAILS.get(model.name))
    again = load_backbone(f"{model.family.name}:{tiny_models.folder(model.name)}", backbone.modality,
                          model.load_options())
    assert type(again) is type(backbone) and again.fingerprint() == backbone.fingerprint()
    assert again.settings() == backbone.settings()
    for owner, module in _modules(backbone).items():
        reloaded = _modules(again)[owner].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(reloaded[key], value), f"{owner}.{key}"
    feats = again.features(again.encode(make_split("train", ROWS), range(ROWS)), model.timesteps,
                           list(every_block[model.timesteps[0]]))
    for t in model.timesteps:
        for b, value in feats[t].items():
            assert torch.equal(value, every_block[t][b]), (t, b)


@pytest.mark.parametrize("key", list(FAMILY_TABLE), ids=_family_id)
def test_a_folder_that_does_not_exist_is_a_clear_error(key: tuple[str, str], tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    _known_defect(request, MISSING_FOLDER_FAILS.get(key))
    model = _first_model(key)
    missing = tmp_path / "nowhere" / key[1]
    with pytest.raises(BackboneError) as error:
        model.family.load(str(missing), model.load_options())
    message = str(error.value)
    assert str(missing) in message and re.search(r"does not exist|not an existing folder", message)
    assert "download" in message


@pytest.mark.parametrize("key", list(FAMILY_TABLE), ids=_family_id)
def test_a_folder_without_a_checkpoint_is_a_clear_error(key: tuple[str, str], tmp_path: Path) -> None:
    model = _first_model(key)
    with pytest.raises(BackboneError) as error:
        model.family.load(str(tmp_path), model.load_options())
    assert str(tmp_path) in str(error.value) and "download" in str(error.value)


@pytest.mark.parametrize("key", list(FAMILY_TABLE), ids=_family_id)
def test_a_hub_id_that_is_not_cached_names_what_to_download(key: tuple[str, str]) -> None:
    # Tests run offline (HF_HUB_OFFLINE=1, empty cache): the default id, or any id, is not there.
    model = _first_model(key)
    source = model.family.default_source or "someone/not-cached"
    with pytest.raises(BackboneError) as error:
        model.family.load(source, model.load_options())
    message = str(error.value)
    assert source in message and "download" in message
    if model.hub:
        assert re.search(rf"download {re.escape(source)} --local-dir", message)


# ------------------------------------------------------------------------------------- features


def test_one_pass_returns_every_requested_block_and_stops_after_the_deepest(model: TinyModel,
                                                                            backbone: Backbone,
                                                                            batch: Encoded) -> None:
    n = backbone.num_blocks
    wanted = [n // 2, 1, n // 2]  # unordered, repeated: the deepest is n // 2 < n
    deepest = n // 2
    timesteps = model.timesteps[:1] if model.trajectory else model.timesteps  # DDIM: t > 0 needs earlier passes
    with count_calls(model.blocks(backbone)) as counts:
        feats = backbone.features(batch, timesteps, wanted)
    assert counts == [1] * deepest + [0] * (n - deepest)  # every timestep in the same pass
    assert list(feats) == timesteps and all(set(feats[t]) == {1, deepest} for t in timesteps)


def test_features_are_one_float32_row_per_sample_at_each_blocks_width(
    model: TinyModel, backbone: Backbone, every_block: dict[int, dict[int, torch.Tensor]]
) -> None:
    assert list(every_block) == model.timesteps
    for t, per_block in every_block.items():
        assert set(per_block) == set(range(1, backbone.num_blocks + 1))
        for b, value in per_block.items():
            assert value.shape == (ROWS, backbone.block_widths()[b]) and value.dtype == torch.float32, (t, b)
            assert value.device.type == backbone.device.type and torch.isfinite(value).all(), (t, b)


def test_features_differ_across_blocks_rows_and_timesteps(
    model: TinyModel, backbone: Backbone, every_block: dict[int, dict[int, torch.Tensor]]
) -> None:
    first, last = model.timesteps[0], model.timesteps[-1]
    shallow, deep = every_block[first][1], every_block[first][backbone.num_blocks]
    if shallow.shape == deep.shape:  # a U-Net's stages differ in width
        assert (shallow - deep).abs().max() > 1e-3
    rows = every_block[first][backbone.num_blocks]
    assert torch.cdist(rows, rows)[~torch.eye(ROWS, dtype=torch.bool)].min() > 1e-4
    if model.diffusion:
        assert (every_block[first][backbone.num_blocks] - every_block[last][backbone.num_blocks]).abs().max() > 1e-3


def test_a_repeated_request_gives_identical_features(model: TinyModel, backbone: Backbone, batch: Encoded,
                                                     every_block: dict[int, dict[int, torch.Tensor]]) -> None:
    again = backbone.features(batch, model.timesteps, list(range(1, backbone.num_blocks + 1)))
    assert all(torch.equal(again[t][b], every_block[t][b]) for t in every_block for b in every_block[t])


def test_a_smaller_request_gives_the_same_values(model: TinyModel, backbone: Backbone, batch: Encoded,
                                                 every_block: dict[int, dict[int, torch.Tensor]]) -> None:
    t, b = model.timesteps[-1], backbone.num_blocks // 2
    alone = backbone.features(batch, [t], [b])
    torch.testing.assert_close(alone[t][b], every_block[t][b], rtol=1e-4, atol=1e-5)


def test_a_rows_features_do_not_depend_on_its_batch(model: TinyModel, backbone: Backbone,
                                                    every_block: dict[int, dict[int, torch.Tensor]]) -> None:
    blocks = [1, backbone.num_blocks]
    alone = backbone.features(backbone.encode(make_split("train", ROWS), [1]), model.timesteps, blocks)
    for t in model.timesteps:
        for b in blocks:
            torch.testing.assert_close(alone[t][b][0], every_block[t][b][1], rtol=1e-4, atol=1e-5)


def test_the_noise_seed_changes_features_exactly_when_the_settings_record_it(
    model: TinyModel, backbone: Backbone, every_block: dict[int, dict[int, torch.Tensor]], tiny_models: TinyModels,
    request: pytest.FixtureRequest,
) -> None:
    _known_defect(request, FINGERPRINT_FAILS.get(model.name))
    reseeded = model.family.load(str(tiny_models.folder(model.name)), model.load_options(noise_seed=1))
    assert reseeded.fingerprint() == backbone.fingerprint()  # the seed is a setting, not part of the weights
    t, b = model.timesteps[-1], backbone.num_blocks
    feats = reseeded.features(reseeded.encode(make_split("train", ROWS), range(ROWS)), [t], [b])[t][b]
    if reseeded.settings() == backbone.settings():
        assert torch.equal(feats, every_block[t][b])
    else:
        assert (feats - every_block[t][b]).abs().max() > 1e-4


@pytest.mark.parametrize("name", DIFFUSION)
def test_the_noisy_input_at_t_is_the_familys_declared_noising(name: str, tiny_models: TinyModels) -> None:
    model, backbone = TINY_MODELS[name], tiny_models.backbone(name)
    batch = backbone.encode(make_split("train", ROWS), range(ROWS))
    for t in (0, *model.timesteps, 999):
        for what, computed, expected in model.noise(backbone, batch, t):  # type: ignore[misc]
            torch.testing.assert_close(computed.double(), expected.double(), rtol=1e-5, atol=1e-5,
                                       msg=lambda m, t=t, what=what: f"{what} at t={t}: {m}")


@pytest.mark.parametrize("t", [1, 10, 999])
@pytest.mark.parametrize("name", ENCODERS)
def test_an_encoder_refuses_every_timestep_but_zero(name: str, t: int, tiny_models: TinyModels) -> None:
    backbone = tiny_models.backbone(name)
    batch = backbone.encode(make_split("train", 1), [0])
    with pytest.raises(BackboneError, match=rf"t is fixed at 0, got t={t}"):
        backbone.features(batch, [0, t], [1])


_BAD_REQUESTS = {
    "block-0": ("t", [0]),
    "block-past-the-last": ("t", ["n+1"]),
    "no-block": ("t", []),
    "t-negative": (-1, [1]),
    "t-1000": (1000, [1]),
    "t-not-an-integer": (10.5, [1]),
}


@pytest.mark.parametrize("case", list(_BAD_REQUESTS))
def test_a_request_out_of_range_is_refused_before_any_block_runs(case: str, model: TinyModel, backbone: Backbone,
                                                                 batch: Encoded) -> None:
    t, raw_blocks = _BAD_REQUESTS[case]
    n = backbone.num_blocks
    timestep = model.timesteps[0] if t == "t" else t
    blocks: Sequence[int] = [n + 1 if b == "n+1" else b for b in raw_blocks]  # type: ignore[misc]
    if t != "t":
        match = "t is fixed at 0" if not model.diffusion else rf"timestep {t!r} is outside \[0, 1000\)"
    else:
        match = rf"block {blocks[0]} is outside 1\.\.{n}" if blocks else "block"
    with count_calls(model.blocks(backbone)) as counts, pytest.raises(BackboneError, match=match):
        backbone.features(batch, [timestep], blocks)  # type: ignore[list-item]
    assert counts == [0] * n


def test_hooks_are_removed_after_a_pass_and_after_a_failed_one(model: TinyModel, backbone: Backbone,
                                                              batch: Encoded) -> None:
    t, before = model.timesteps[0], _hooks(backbone)
    backbone.features(batch, [t], [2])
    assert _hooks(backbone) == before
    with _failing_at(model.blocks(backbone)[0]), pytest.raises(RuntimeError, match="a block failed"):
        backbone.features(batch, [t], [2])
    assert _hooks(backbone) == before


def test_a_split_without_the_modalitys_input_is_a_data_error(model: TinyModel, backbone: Backbone) -> None:
    image = model.key[0] == "image"
    split = make_split("val", 2, images=not image, captions=image)
    with pytest.raises(DataError, match=f"split 'val' has no {'images' if image else 'captions'}"):
        backbone.encode(split, [0, 1])


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=EMPTY_BATCH_FAILS[name]))
    if name in EMPTY_BATCH_FAILS else name for name in TINY_MODELS
])
def test_an_empty_batch_gives_empty_features(name: str, tiny_models: TinyModels) -> None:
    model, backbone = TINY_MODELS[name], tiny_models.backbone(name)
    empty = backbone.encode(make_split("train", ROWS), [])
    feats = backbone.features(empty, model.timesteps, [1, 2])
    assert list(feats) == model.timesteps
    for t in model.timesteps:
        assert {b: tuple(v.shape) for b, v in feats[t].items()} == {b: (0, backbone.block_widths()[b]) for b in (1, 2)}
