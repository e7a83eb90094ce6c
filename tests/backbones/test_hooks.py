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
