"""Probe heads: shapes, both inputs used, simple-concat normalisation, factory errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difffeat_tune._errors import ConfigError
from difffeat_tune.probe.heads import (
    FUSION_METHODS,
    HEAD_KINDS,
    CrossAttention,
    LinearAdd,
    LinearConcat,
    LinearProbe,
    SimpleConcat,
    build_head,
)

B, DI, DT, C, D_ALG = 5, 12, 20, 7, 16


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, DI, generator=g), torch.randn(B, DT, generator=g)


def _fusion(kind: str) -> torch.nn.Module:
    return build_head(kind, image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, seed=0)


def test_fusion_methods_constant() -> None:
    assert FUSION_METHODS == ("simple_concat", "linear_concat", "linear_add", "cross_attention")
    assert HEAD_KINDS == ("linear", *FUSION_METHODS)


def test_linear_probe_shape_and_single_layer() -> None:
    head = build_head("linear", in_dim=DI, n_classes=C, seed=0)
    assert isinstance(head, LinearProbe) and head.n_inputs == 1
    assert head(torch.randn(B, DI)).shape == (B, C)
    assert [type(m) for m in head.modules() if not isinstance(m, LinearProbe)] == [torch.nn.Linear]


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("simple_concat", SimpleConcat), ("linear_concat", LinearConcat), ("linear_add", LinearAdd),
     ("cross_attention", CrossAttention)],
)
def test_fusion_shapes_and_types(kind: str, cls: type) -> None:
    head = _fusion(kind)
    assert isinstance(head, cls) and head.n_inputs == 2
    image, text = _inputs()
    assert head(image, text).shape == (B, C)
    assert isinstance(head.classifier, torch.nn.Linear) and head.classifier.out_features == C


@pytest.mark.parametrize("kind", FUSION_METHODS)
def test_gradient_flows_to_both_inputs(kind: str) -> None:
    head = _fusion(kind)
    image, text = _inputs()
    image.requires_grad_(True)
    text.requires_grad_(True)
    head(image, text).square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert text.grad is not None and text.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", FUSION_METHODS)
def test_output_changes_when_either_input_changes(kind: str) -> None:
    head = _fusion(kind)
    image, text = _inputs()
    other_image, other_text = _inputs(seed=1)
    with torch.no_grad():
        base = head(image, text)
        assert not torch.allclose(base, head(other_image, text))
        assert not torch.allclose(base, head(image, other_text))


def test_simple_concat_l2_normalises_each_input() -> None:
    head = _fusion("simple_concat")
    image, text = _inputs()
    with torch.no_grad():
        base = head(image, text)
        torch.testing.assert_close(head(3.0 * image, text), base)
        torch.testing.assert_close(head(image, 0.01 * text), base)
        expected = head.classifier(torch.cat([F.normalize(image, dim=-1), F.normalize(text, dim=-1)], dim=-1))
    torch.testing.assert_close(base, expected)
    assert head.classifier.in_features == DI + DT


def test_linear_add_and_concat_by_hand() -> None:
    image, text = _inputs()
    add = _fusion("linear_add")
    cat = _fusion("linear_concat")
    with torch.no_grad():
        torch.testing.assert_close(add(image, text), add.classifier(add.image_proj(image) + add.text_proj(text)))
        torch.testing.assert_close(
            cat(image, text), cat.classifier(torch.cat([cat.image_proj(image), cat.text_proj(text)], dim=-1))
        )
    assert add.image_proj.out_features == D_ALG and cat.classifier.in_features == 2 * D_ALG


def test_cross_attention_weights_depend_on_inputs_and_residual_keeps_image() -> None:
    head = build_head("cross_attention", image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, n_tokens=3, seed=0)
    image, text = _inputs()
    with torch.no_grad():
        weights = head.attention_weights(image, text)
        assert weights.shape == (B, 3, 3)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(B, 3))
        assert not torch.allclose(weights, head.attention_weights(image, _inputs(seed=1)[1]))
        # with the attention branch silenced, the image still reaches the classifier through the residual
        head.out.weight.zero_()
        head.out.bias.zero_()
        assert not torch.allclose(head(image, text), head(_inputs(seed=1)[0], text))


def test_cross_attention_with_one_token_is_linear_addition() -> None:
    head = build_head("cross_attention", image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, n_tokens=1, seed=0)
    image, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(head.attention_weights(image, text), torch.ones(B, 1, 1))
        expected = head.classifier(head.image_tokens(image) + head.out(head.value(head.text_tokens(text))))
        torch.testing.assert_close(head(image, text), expected)


def test_unknown_kind_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_head("concat_sum", image_dim=DI, text_dim=DT, n_classes=C)
    for name in HEAD_KINDS:
        assert name in str(info.value)


def test_missing_or_invalid_widths_raise() -> None:
    with pytest.raises(ConfigError, match="in_dim"):
        build_head("linear", n_classes=C)
    with pytest.raises(ConfigError, match="image_dim and text_dim"):
        build_head("linear_add", image_dim=DI, n_classes=C)
    with pytest.raises(ConfigError, match="d_alg"):
        build_head("linear_add", image_dim=DI, text_dim=DT, n_classes=C, d_alg=0)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_head("linear_add", image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, seed=5)
    b = build_head("linear_add", image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = build_head("linear_add", image_dim=DI, text_dim=DT, n_classes=C, d_alg=D_ALG, seed=6)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
