"""Torch threads per process: the cores shared by the trial loops, and a warning on a busy machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

from difffeat_tune._device import available_cores, configure_threads


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cores_are_divided_among_the_workers_and_an_explicit_count_wins(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    cores = available_cores()
    assert configure_threads(workers=1) == cores == torch.get_num_threads()
    assert configure_threads(workers=cores * 2) == 1  # never below one thread
    assert configure_threads(workers=4, threads=3) == 3 == torch.get_num_threads()


def test_a_busy_machine_is_named_with_what_to_do(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    cores = available_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="difffeat_tune._device"):
        configure_threads(workers=1)
    assert f"load {cores + 1.5:.1f} on {cores} cores" in caplog.text and "--threads" in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="difffeat_tune._device"):
        configure_threads(workers=1)
    assert caplog.text == ""
