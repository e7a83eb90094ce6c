"""Plaid backbone: architecture keys, tiny build/load round trip, features, noising, errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from difffeat_tune._errors import BackboneError, ConfigError, DataError
from difffeat_tune.backbones._base import Encoded, seeded_normal
from difffeat_tune.backbones._plaid_net import (
    MUP_BASE_WIDTH,
    GammaBounds,
    NoiseSchedule,
    PlaidConfig,
    PlaidNet,
)
from difffeat_tune.backbones.plaid import PlaidBackbone, build_tiny_plaid, load_plaid
from difffeat_tune.data._base import Split
from tests.backbones.tiny_models import PLAID_CAPTIONS as CAPTIONS
from tests.backbones.tiny_models import PLAID_TOKEN_LENGTH as TOKEN_LENGTH
from tests.backbones.tiny_models import TinyModels

BLOCKS = [8, 12, 16, 20, 24]


def make_split(captions: tuple[str, ...] = CAPTIONS, name: str = "train") -> Split:
    n = len(captions)
    labels = np.zeros((n, 3), dtype=np.int8)
    labels[np.arange(n), np.arange(n) % 3] = 1
    return Split(name, tuple(f"row{i}" for i in range(n)), labels, captions)


def load(folder, **kwargs) -> PlaidBackbone:
    kwargs.setdefault("token_length", TOKEN_LENGTH)
    return load_plaid(folder, device="cpu", **kwargs)


#: Tiny models gain nothing from intra-op threads, which thrash on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tiny_models: TinyModels):
    return tiny_models.folder("plaid")


@pytest.fixture(scope="module")
def backbone(tiny_models: TinyModels) -> PlaidBackbone:
    return tiny_models.backbone("plaid")  # type: ignore[return-value]  # DDIM, token length 16


@pytest.fixture(scope="module")
def batch(backbone) -> Encoded:
    return backbone.encode(make_split(), range(len(CAPTIONS)))


# ---------------------------------------------------------------- (a) release key names and shapes


def expected_plaid_1b_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {
        "input_linear.weight": (2048, 16),
        "selfcond_linear.weight": (2048, 16),
        "gamma_linear.weight": (2048, 64),
        "rotary_emb.inv_freq": (32,),
        "output_norm.weight": (2048,),
        "output_linear.weight": (32768, 2048),
        "output_linear.bias": (32768,),
    }
    for i in range(24):
        shapes[f"blocks.{i}.rmsnorm1.weight"] = (2048,)
        shapes[f"blocks.{i}.attn_qkv.weight"] = (6144, 2048)
        shapes[f"blocks.{i}.attn_out.weight"] = (2048, 2048)
        shapes[f"blocks.{i}.rmsnorm2.weight"] = (2048,)
        shapes[f"blocks.{i}.mlp.fc1.weight"] = (8192, 2048)
        shapes[f"blocks.{i}.mlp.fc2.weight"] = (2048, 8192)
    return shapes


def test_plaid_1b_state_dict_matches_released_model_keys_and_shapes():
    with torch.device("meta"):
        net = PlaidNet(PlaidConfig.plaid_1b())
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == expected_plaid_1b_shapes()
    assert len(got) == 7 + 24 * 6


def test_noise_schedule_and_side_files_match_released_keys_and_shapes():
    with torch.device("meta"):
        schedule = NoiseSchedule()
        bounds = GammaBounds()
    assert {k: tuple(v.shape) for k, v in schedule.state_dict().items()} == {
        "W1": (1024, 1), "b1": (1024,), "W2": (1, 1024)
    }
    assert {k: tuple(v.shape) for k, v in bounds.state_dict().items()} == {"gamma_0": (), "gamma_1": ()}


# ---------------------------------------------------------------- (b) build, save, load


def test_tiny_build_writes_released_layout_and_loads_identical_state(tiny_folder, backbone):
    names = {p.name for p in tiny_folder.iterdir()}
    assert names == {"model.pt", "noise_schedule.pt", "gamma_bounds.pt", "embedding_matrix.pt",
                     "config.json", "tokenizer.json"}
    saved = torch.load(tiny_folder / "model.pt", weights_only=True)
    loaded = backbone.net.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    saved_schedule = torch.load(tiny_folder / "noise_schedule.pt", weights_only=True)
    assert all(torch.equal(saved_schedule[k].double(), v) for k, v in backbone.schedule.state_dict().items())
    matrix = torch.load(tiny_folder / "embedding_matrix.pt", weights_only=True)["matrix"]
    assert torch.equal(matrix, backbone.embedding.matrix)
    assert backbone.config == PlaidConfig(dim=64, n_blocks=24, n_heads=4, embed_dim=16, vocab_size=1024)
    assert (backbone.num_blocks, backbone.width, backbone.num_timesteps) == (24, 64, 1000)


def test_tiny_build_is_deterministic_from_seed(tmp_path):
    first = build_tiny_plaid(tmp_path / "a", CAPTIONS, seed=3, n_blocks=2)
    second = build_tiny_plaid(tmp_path / "b", CAPTIONS, seed=3, n_blocks=2)
    other = build_tiny_plaid(tmp_path / "c", CAPTIONS, seed=4, n_blocks=2)
    for name in ("model.pt", "noise_schedule.pt", "gamma_bounds.pt", "embedding_matrix.pt"):
        a, b = (torch.load(f / name, weights_only=True) for f in (first, second))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    a, c = (torch.load(f / "model.pt", weights_only=True) for f in (first, other))
    assert not torch.equal(a["blocks.0.attn_qkv.weight"], c["blocks.0.attn_qkv.weight"])


def test_fingerprint_changes_with_weights(tmp_path, backbone):
    other = load(build_tiny_plaid(tmp_path / "seed1", CAPTIONS, seed=1))
    assert other.fingerprint() != backbone.fingerprint()


def test_config_is_inferred_from_shapes_without_config_json(tmp_path):
    folder = build_tiny_plaid(tmp_path / "m", CAPTIONS, n_blocks=3, dim=32, n_heads=2)
    (folder / "config.json").unlink()
    assert load(folder).config == PlaidConfig(dim=32, n_blocks=3, n_heads=2, embed_dim=16, vocab_size=1024)


@pytest.mark.parametrize(
    "name", ["model.pt", "noise_schedule.pt", "gamma_bounds.pt", "embedding_matrix.pt", "tokenizer.json"]
)
def test_missing_file_names_its_path_and_the_source(tmp_path, name):
    folder = build_tiny_plaid(tmp_path / "m", CAPTIONS, n_blocks=2)
    (folder / name).unlink()
    with pytest.raises(BackboneError) as err:
        load(folder)
    assert str(folder / name) in str(err.value)
    assert "igul222/plaid" in str(err.value)


def test_wrong_shape_key_fails_strict_load_naming_key_and_shapes(tmp_path):
    folder = build_tiny_plaid(tmp_path / "m", CAPTIONS, n_blocks=2)
    state = torch.load(folder / "model.pt", weights_only=True)
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    torch.save(state, folder / "model.pt")
    with pytest.raises(BackboneError, match=r"blocks\.1\.mlp\.fc1\.weight has \[100, 64\], expected \[256, 64\]"):
        load(folder)


def test_missing_and_unexpected_keys_fail_strict_load(tmp_path):
    folder = build_tiny_plaid(tmp_path / "m", CAPTIONS, n_blocks=2)
    state = torch.load(folder / "noise_schedule.pt", weights_only=True)
    state["W3"] = state.pop("W2")
    torch.save(state, folder / "noise_schedule.pt")
    with pytest.raises(BackboneError, match=r"missing keys \[W2\]; unexpected keys \[W3\]"):
        load(folder)


def test_bad_options_are_config_errors(tiny_folder):
    with pytest.raises(ConfigError, match="noising"):
        load(tiny_folder, noising="gaussian")
    with pytest.raises(ConfigError, match="inversion_step"):
        load(tiny_folder, inversion_step=0)


# ---------------------------------------------------------------- the network itself


def test_blocks_return_residual_stream_and_readout_scale_is_applied_once(backbone, batch):
    net = backbone.net
    z = backbone.noisy_embeddings(batch, [0])[0]
    gamma = backbone.schedule_at([0])[0].expand(len(batch))
    hidden = {}
    handle = net.blocks[-1].register_forward_hook(lambda m, a, out: hidden.setdefault("last", out))
    try:
        with torch.no_grad():
            readout = net.readout(z, gamma)
    finally:
        handle.remove()
    h = hidden["last"]
    assert h.shape == (len(batch), TOKEN_LENGTH, 64)
    with torch.no_grad():  # LayerNorm written out: no bias, eps 1e-5, learned gain
        normed = torch.nn.functional.layer_norm(h, (64,), eps=1e-5) * net.output_norm.weight
        expected = net.output_linear.weight @ (normed * (MUP_BASE_WIDTH / 64))[..., None]
        expected = expected[..., 0] + net.output_linear.bias
    assert readout.shape == (len(batch), TOKEN_LENGTH, 1024)
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)


def test_logits_are_the_readout_plus_the_z_term(backbone, batch):
    net = backbone.net
    z = backbone.noisy_embeddings(batch, [20])[20]
    gamma = backbone.schedule_at([20])[0].expand(len(batch))
    emb = backbone.embedding.normalized()
    with torch.no_grad():
        logits = net(z, gamma, emb)
        readout = net.readout(z, gamma)
    coef = torch.sigmoid(-gamma).sqrt() / torch.sigmoid(gamma)
    z_term = coef.float()[:, None, None] * torch.einsum("ble,ve->blv", z, emb)
    torch.testing.assert_close(logits, readout + z_term, atol=1e-5, rtol=1e-5)
    assert z_term.abs().max() > 1.0  # the term is not negligible at t = 20


# ---------------------------------------------------------------- (c) features


def test_features_do_not_depend_on_other_requested_timesteps(backbone, batch):
    together = backbone.features(batch, [0, 10, 25, 30], [12, 24])
    for t in (0, 10, 25, 30):
        alone = backbone.features(batch, [t], [12, 24])
        for b in (12, 24):
            torch.testing.assert_close(alone[t][b], together[t][b], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- (d) tokens, mask and pooling


def test_captions_are_padded_with_end_of_text_and_mask_marks_real_tokens(backbone, batch):
    tokens, mask = batch.tensors["tokens"], batch.tensors["mask"]
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    assert tokens.shape == mask.shape == (len(CAPTIONS), TOKEN_LENGTH)
    for i, caption in enumerate(CAPTIONS):
        ids = backbone.tokenizer.encode(caption, add_special_tokens=False).ids[:TOKEN_LENGTH]
        assert tokens[i, : len(ids)].tolist() == ids
        assert mask[i].sum() == len(ids) and mask[i, : len(ids)].all()
        assert (tokens[i, len(ids):] == 0).all()
    assert backbone.tokenizer.id_to_token(0) == "<|endoftext|>"


def test_pooling_averages_the_caption_tokens_only(backbone, batch):
    mask = batch.tensors["mask"]
    assert not mask.all()  # some rows have padding, so the two means below differ
    z = backbone.noisy_embeddings(batch, [10])[10]
    gamma = backbone.schedule_at([10])[0].expand(len(batch))
    hidden = {}
    handle = backbone.net.blocks[11].register_forward_hook(lambda m, a, out: hidden.setdefault("h", out))
    try:
        with torch.no_grad():
            backbone.net.readout(z, gamma)
    finally:
        handle.remove()
    h = hidden["h"]
    real_mean = torch.stack([h[i][mask[i]].mean(dim=0) for i in range(len(h))])
    feats = backbone.features(batch, [10], [12])[10][12]
    torch.testing.assert_close(feats, real_mean, atol=1e-5, rtol=1e-5)
    assert (feats - h.mean(dim=1)).abs().max() > 1e-3


def test_captions_are_truncated_to_token_length(tiny_folder):
    short = load(tiny_folder, token_length=4)
    assert short.settings()["token_length"] == 4
    captions = ("a dog runs on the green grass", "a dog runs on a red sofa in the rain")
    split = make_split(captions)
    enc = short.encode(split, [0, 1])
    assert enc.tensors["mask"].all()
    assert torch.equal(enc.tensors["tokens"][0], enc.tensors["tokens"][1])  # same first 4 tokens
    feats = short.features(enc, [0], [24])[0][24]
    assert torch.equal(feats[0], feats[1])


def test_settings_record_every_feature_changing_option(backbone):
    settings = backbone.settings()
    assert settings["token_length"] == TOKEN_LENGTH
    assert settings["noising"] == "ddim" and settings["inversion_step"] == 10
    assert settings["pooling"] == "mean-real-tokens"
    assert isinstance(settings["tokenizer"], str) and len(settings["tokenizer"]) == 16
    json.dumps(settings)


# ---------------------------------------------------------------- (e) noising


def test_ddim_step_follows_the_model_prediction(backbone, batch):
    z = backbone.noisy_embeddings(batch, [0, 10])
    gamma, alpha, sigma = backbone.schedule_at([0, 10])
    emb = backbone.embedding.normalized()
    with torch.no_grad():
        readout = backbone.net.readout(z[0], gamma[0].expand(len(batch)))
    logits = readout + float(alpha[0] / sigma[0] ** 2) * z[0] @ emb.T
    x_hat = logits.softmax(dim=-1) @ emb
    eps_hat = (z[0] - float(alpha[0]) * x_hat) / float(sigma[0])
    torch.testing.assert_close(z[10], float(alpha[1]) * x_hat + float(sigma[1]) * eps_hat)


def float64_reference_inversion(bb: PlaidBackbone, tokens: torch.Tensor, grid: list[int]) -> dict[int, torch.Tensor]:
    """``z_t`` along the DDIM grid, written from Plaid's formulas in float64.

    Only the Transformer body (input to the last block's residual stream) is taken from the
    model, run in float64 on a copy; everything that defines the prediction is written here:
    the readout ``output_linear(LayerNorm(h) * 256 / dim)``, the z term
    ``(alpha / sigma^2) z . E^T``, ``x_hat = softmax(logits) @ E``, ``eps_hat`` and the step.
    """
    import copy

    net = copy.deepcopy(bb.net).double()
    cfg = net.config
    matrix = bb.embedding.matrix.detach().double()
    emb = matrix / (matrix.norm(dim=1, keepdim=True) + 1e-8)
    t = torch.tensor(grid, dtype=torch.float64) / 1000
    schedule = copy.deepcopy(bb.schedule).double()
    w1 = torch.nn.functional.softplus(schedule.W1)
    w2 = 0.01 * torch.nn.functional.softplus(schedule.W2)

    def h_of(s: torch.Tensor) -> torch.Tensor:
        return (torch.tanh((s[:, None] - 0.5) @ w1.T + schedule.b1) @ w2.T)[:, 0]

    ends = h_of(torch.tensor([0.0, 1.0], dtype=torch.float64))
    g0, g1 = float(bb.bounds.gamma_0), float(bb.bounds.gamma_1)
    gammas = g0 + (g1 - g0) * (h_of(t) - ends[0]) / (ends[1] - ends[0])
    n, length = tokens.shape

    def body(z: torch.Tensor, gamma: float) -> torch.Tensor:
        a2, s2 = 1 / (1 + math.exp(gamma)), 1 / (1 + math.exp(-gamma))
        x = net.input_linear(z / math.sqrt(a2 / cfg.embed_dim + s2))
        freqs = torch.exp(torch.linspace(-5.0, 5.0, 32, dtype=torch.float64)) * gamma
        x = x + net.gamma_linear(torch.cat([freqs.sin(), freqs.cos()]))[None, None, :]
        inv = 1.0 / (10000.0 ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv)
        angles = torch.cat([angles, angles], dim=-1)
        for block in net.blocks:
            x = block(x, angles.cos(), angles.sin())
        return x

    out = {}
    z = math.sqrt(1 / (1 + math.exp(float(gammas[0])))) * emb[tokens]
    for i, g in enumerate(grid):
        out[g] = z
        if i + 1 == len(grid):
            break
        gamma = float(gammas[i])
        alpha, sigma = math.sqrt(1 / (1 + math.exp(gamma))), math.sqrt(1 / (1 + math.exp(-gamma)))
        with torch.no_grad():
            h = body(z, gamma)
            normed = torch.nn.functional.layer_norm(h, (cfg.dim,), eps=1e-5) * net.output_norm.weight
            readout = normed * (256 / cfg.dim) @ net.output_linear.weight.T + net.output_linear.bias
        logits = readout + (alpha / sigma**2) * (z @ emb.T)
        x_hat = torch.softmax(logits, dim=-1) @ emb
        eps_hat = (z - alpha * x_hat) / sigma
        nxt = float(gammas[i + 1])
        z = math.sqrt(1 / (1 + math.exp(nxt))) * x_hat + math.sqrt(1 / (1 + math.exp(-nxt))) * eps_hat
    return out


def test_ddim_inversion_equals_a_float64_reference_of_plaid_prediction(backbone, batch):
    reference = float64_reference_inversion(backbone, batch.tensors["tokens"], [0, 10, 20])
    noisy = backbone.noisy_embeddings(batch, [10, 20])
    for t in (10, 20):  # one and two inversion steps
        expected = reference[t].float()
        relative = (noisy[t] - expected).norm() / expected.norm()
        assert relative < 1e-5, (t, float(relative))


def test_ddim_inversion_without_the_z_term_would_differ(backbone, batch):
    # The check above can fail: the readout alone moves z_t far beyond its tolerance.
    tokens = batch.tensors["tokens"]
    gamma, alpha, sigma = backbone.schedule_at([0, 10])
    emb = backbone.embedding.normalized()
    z0 = float(alpha[0]) * emb[tokens]
    with torch.no_grad():
        x_hat = backbone.net.readout(z0, gamma[0].expand(len(batch))).softmax(dim=-1) @ emb
    readout_only = float(alpha[1]) * x_hat + float(sigma[1]) * (z0 - float(alpha[0]) * x_hat) / float(sigma[0])
    z10 = backbone.noisy_embeddings(batch, [10])[10]
    assert (readout_only - z10).norm() / z10.norm() > 1e-3


def test_random_noising_features_are_a_plain_pass_over_the_noised_embeddings(tiny_folder, batch):
    bb = load(tiny_folder, noising="random", noise_seed=3)
    _, alpha, sigma = bb.schedule_at([30])
    gamma = bb.schedule_at([30])[0].expand(len(batch))
    x0 = bb.embedding.normalized()[batch.tensors["tokens"]]
    z = float(alpha) * x0 + float(sigma) * seeded_normal(batch.ids, 30, (TOKEN_LENGTH, 16), 3, torch.device("cpu"))
    hidden = {}
    handle = bb.net.blocks[11].register_forward_hook(lambda m, a, out: hidden.setdefault("h", out))
    try:
        with torch.no_grad():
            bb.net.readout(z, gamma)
    finally:
        handle.remove()
    mask = batch.tensors["mask"].float().unsqueeze(-1)
    expected = (hidden["h"] * mask).sum(dim=1) / mask.sum(dim=1)
    torch.testing.assert_close(bb.features(batch, [30], [12])[30][12], expected, atol=1e-5, rtol=1e-5)


def test_settings_carry_the_text_feature_version(backbone):
    from difffeat_tune.backbones.plaid import FEATURE_VERSION

    assert FEATURE_VERSION >= 2  # 2: the DDIM prediction has the z term
    assert backbone.settings()["feature_version"] == FEATURE_VERSION


# ---------------------------------------------------------------- (e2) DDIM pass sharing


def reference_ddim_features(
    bb: PlaidBackbone, batch: Encoded, timesteps: list[int], blocks: list[int]
) -> tuple[dict[int, torch.Tensor], dict[int, dict[int, torch.Tensor]]]:
    """``z_t`` and pooled features the slow way: one plain pass per inversion step, one per target."""
    step = bb.inversion_step
    tokens, mask = batch.tensors["tokens"], batch.tensors["mask"]
    gamma, alpha, sigma = bb.schedule_at(list(range(0, max(timesteps) + 1)))
    matrix = bb.embedding.matrix.detach()
    emb = matrix / (matrix.norm(dim=1, keepdim=True) + 1e-8)
    n = len(batch)

    def predict(z: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = bb.net.readout(z, gamma[s].expand(n))
        logits = logits + float(alpha[s] / sigma[s] ** 2) * z @ emb.T  # the z term of Plaid's logits
        x_hat = logits.softmax(dim=-1) @ emb
        return x_hat, (z - float(alpha[s]) * x_hat) / float(sigma[s])

    zs = {}
    for t in timesteps:  # each target on its own: z_t cannot depend on the other targets
        z, g = float(alpha[0]) * emb[tokens], 0
        while g + step <= t:
            x_hat, eps_hat = predict(z, g)
            g += step
            z = float(alpha[g]) * x_hat + float(sigma[g]) * eps_hat
        if g != t:
            x_hat, eps_hat = predict(z, g)
            z = float(alpha[t]) * x_hat + float(sigma[t]) * eps_hat
        zs[t] = z
    feats: dict[int, dict[int, torch.Tensor]] = {}
    weights = mask.float().unsqueeze(-1)
    for t, z in zs.items():
        hidden: dict[int, torch.Tensor] = {}
        handles = [
            bb.net.blocks[b - 1].register_forward_hook(lambda m, a, out, b=b: hidden.__setitem__(b, out))
            for b in blocks
        ]
        try:
            with torch.no_grad():
                bb.net.readout(z, gamma[t].expand(n))
        finally:
            for handle in handles:
                handle.remove()
        feats[t] = {b: (hidden[b] * weights).sum(dim=1) / weights.sum(dim=1) for b in blocks}
    return zs, feats


@contextmanager
def rows_through(bb: PlaidBackbone) -> Iterator[dict[str, object]]:
    """Counts the net's passes and the rows each block computes (forward pre-hooks)."""
    seen: dict[str, object] = {"passes": 0, "rows": [0] * bb.num_blocks}

    def on_net(_m, args):
        seen["passes"] += 1  # type: ignore[operator]

    def on_block(b: int):
        def hook(_m, args):
            seen["rows"][b] += args[0].shape[0]  # type: ignore[index]
        return hook

    handles = [bb.net.register_forward_pre_hook(on_net)]
    handles += [block.register_forward_pre_hook(on_block(i)) for i, block in enumerate(bb.net.blocks)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("timesteps", [[0, 10, 20, 30], [30, 0, 10, 25], [25], [5, 40, 20]])
def test_ddim_features_equal_the_step_by_step_reference(backbone, batch, timesteps):
    zs, expected = reference_ddim_features(backbone, batch, sorted(set(timesteps)), BLOCKS)
    noisy = backbone.noisy_embeddings(batch, timesteps)
    feats = backbone.features(batch, timesteps, BLOCKS)
    assert list(feats) == timesteps
    for t in timesteps:
        torch.testing.assert_close(noisy[t], zs[t], atol=1e-5, rtol=1e-5)
        for b in BLOCKS:
            torch.testing.assert_close(feats[t][b], expected[t][b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_pass_rows", [len(CAPTIONS), 256])
def test_ddim_paper_grid_runs_each_grid_point_through_the_net_once(tiny_folder, batch, max_pass_rows):
    bb = load(tiny_folder, max_pass_rows=max_pass_rows)
    n = len(batch)
    with rows_through(bb) as seen:
        feats = bb.features(batch, [0, 10, 20, 30], BLOCKS)
    # Full passes at 0, 10, 20 give features and the next step's logits; 30 stops after block 24.
    # Separate inversion and feature passes would be 3 + 4 = 7 (7 n rows).
    assert seen["passes"] == 4
    assert seen["rows"] == [4 * n] * 24
    _, expected = reference_ddim_features(bb, batch, [0, 10, 20, 30], BLOCKS)
    for t in (0, 10, 20, 30):
        for b in BLOCKS:
            torch.testing.assert_close(feats[t][b], expected[t][b], atol=1e-5, rtol=1e-5)


def test_ddim_end_of_trajectory_still_stops_after_the_deepest_block(backbone, batch):
    n = len(batch)
    with rows_through(backbone) as seen:
        backbone.features(batch, [0, 10, 20, 30], [8, 12])
    assert seen["passes"] == 4
    # 0, 10 and 20 feed the trajectory (whole net); 30 only needs blocks 1..12.
    assert seen["rows"] == [4 * n] * 12 + [3 * n] * 12


@pytest.mark.parametrize(("max_pass_rows", "passes"), [(len(CAPTIONS), 5), (256, 4)])
def test_ddim_off_grid_and_end_targets_share_stopped_passes(tiny_folder, batch, max_pass_rows, passes):
    bb = load(tiny_folder, max_pass_rows=max_pass_rows)
    n = len(batch)
    with rows_through(bb) as seen:
        bb.features(batch, [0, 10, 25, 30], [12, 24])
    # Whole-net passes at 0, 10 (targets) and 20 (inversion only); 25 and 30 feed nothing.
    assert seen["passes"] == passes
    assert seen["rows"] == [5 * n] * 24


def test_random_noising_batches_all_timesteps_in_one_stopped_pass(tiny_folder, batch):
    bb = load(tiny_folder, noising="random")
    with rows_through(bb) as seen:
        bb.features(batch, [0, 10, 20, 30], [8, 12])
    assert seen["passes"] == 1
    assert seen["rows"] == [4 * len(batch)] * 12 + [0] * 12


# ---------------------------------------------------------------- (f) validation


# ---------------------------------------------------------------- (g) captions


@pytest.mark.parametrize("caption", ["", "   \n"])
def test_empty_caption_is_a_data_error_naming_the_row(backbone, caption):
    split = make_split(("a dog", caption, "a cat"), name="val")
    with pytest.raises(DataError, match=r"split 'val': caption of row id 'row1' is empty"):
        backbone.encode(split, [0, 1, 2])


# ---------------------------------------------------------------- (h) schedule


def test_schedule_is_normalised_and_gamma_increases(backbone):
    g = backbone.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert g.dtype == torch.float64
    assert math.isclose(float(g[0]), 0.0, abs_tol=1e-12) and math.isclose(float(g[1]), 1.0, rel_tol=1e-12)
    gamma, alpha, sigma = backbone.schedule_at(list(range(0, 1000, 7)) + [999])
    assert (gamma.diff() > 0).all()
    assert math.isclose(float(gamma[0]), -3.0, abs_tol=1e-9)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
