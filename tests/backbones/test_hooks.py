from __future__ import annotations

import pytest
import torch
from torch import nn

from difffeat_tune._errors import BackboneError
from difffeat_tune.backbones._hooks import capture_blocks, masked_mean_pool, mean_pool


class _Counted(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.linear(x)


def _stack(depth: int = 6, width: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[_Counted(width) for _ in range(depth)])


def test_capture_returns_pooled_output_of_each_requested_block() -> None:
    model = _stack()
    x = torch.randn(2, 5, 4)
    expected, h = {}, x
    for i, block in enumerate(model, start=1):
        h = block(h)
        expected[i] = h.mean(dim=1)
    with capture_blocks(nn.ModuleList(model), [2, 4], mean_pool) as cap:
        got = cap.run(lambda: model(x))
    assert set(got) == {2, 4}
    torch.testing.assert_close(got[2], expected[2])
    torch.testing.assert_close(got[4], expected[4])


def test_forward_stops_after_deepest_requested_block() -> None:
    model = _stack()
    with capture_blocks(nn.ModuleList(model), [1, 3], mean_pool) as cap:
        cap.run(lambda: model(torch.randn(1, 2, 4)))
    assert [b.calls for b in model] == [1, 1, 1, 0, 0, 0]


def test_stop_false_runs_the_whole_model_and_keeps_its_output() -> None:
    model = _stack()
    x = torch.randn(2, 5, 4)
    with capture_blocks(nn.ModuleList(model), [1, 3], mean_pool) as cap:
        stopped = cap.run(lambda: model(x))
    assert cap.output is None
    with capture_blocks(nn.ModuleList(model), [1, 3], mean_pool, stop=False) as cap:
        got = cap.run(lambda: model(x))
    assert [b.calls for b in model] == [2, 2, 2, 1, 1, 1]
    torch.testing.assert_close(cap.output, model(x))
    assert set(got) == {1, 3}
    for b in (1, 3):
        torch.testing.assert_close(got[b], stopped[b])


def test_hooks_are_removed_after_the_pass_and_after_an_error() -> None:
    model = _stack()
    blocks = nn.ModuleList(model)
    with capture_blocks(blocks, [2], mean_pool) as cap:
        cap.run(lambda: model(torch.randn(1, 2, 4)))
    assert all(not b._forward_hooks for b in model)
    with pytest.raises(ValueError):
        with capture_blocks(blocks, [2], mean_pool):
            raise ValueError("boom")
    assert all(not b._forward_hooks for b in model)


def test_blocks_outside_the_model_are_rejected() -> None:
    blocks = nn.ModuleList(_stack(depth=3))
    for wanted in ([0], [4], []):
        with pytest.raises(BackboneError):
            with capture_blocks(blocks, wanted, mean_pool):
                pass


def test_masked_mean_pool_averages_only_real_tokens() -> None:
    tokens = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(masked_mean_pool(mask)(tokens), torch.tensor([[2.0], [4.0]]))


class _Joint(nn.Module):
    """Returns (text stream, image stream), as SD3/Flux joint blocks do."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        text, image = pair
        return text + 1.0, image + self.linear(image)


def test_select_pools_the_image_stream_of_joint_blocks_given_as_a_plain_list() -> None:
    from difffeat_tune.backbones._hooks import joint_image_tokens

    torch.manual_seed(0)
    blocks = [_Joint(4) for _ in range(3)]
    text, image = torch.zeros(2, 7, 4), torch.randn(2, 5, 4)
    expected, pair = {}, (text, image)
    for b, block in enumerate(blocks, start=1):
        pair = block(pair)
        expected[b] = pair[1].mean(dim=1)

    def forward() -> object:
        state = (text, image)
        for block in blocks:
            state = block(state)
        return state

    with capture_blocks(blocks, [1, 2], mean_pool, select=joint_image_tokens) as cap:
        got = cap.run(forward)
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2])
    with pytest.raises(BackboneError, match="not \\(encoder_hidden_states, hidden_states\\)"):
        joint_image_tokens(torch.zeros(1, 2, 3))
