"""The objective's memory: feature tensors kept between trials under one byte budget.

Fusion trials reuse their modality's optimum, and the trials of one phase read the same splits,
so an objective keeps the inputs it built (standardised, in the store's dtype) for the next
trial. What it may keep is counted in bytes, not tensors: one COCO-sized 2,048-wide training
feature is 0.34 GB in float16, a 64-wide one of the embedded data 0.3 MB. The same budget is
shared with the batches of probes the objective trains (:meth:`FeatureCache.reserve`), so the
cache and a batch together never plan to hold more than the budget.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's elements."""
    return tensor.numel() * tensor.element_size()


class FeatureCache:
    """Least-recently-used tensors whose bytes stay within a budget.

    Args:
        budget: bytes the cache and the reservations made through it may hold together.

    Example:
        >>> cache = FeatureCache(budget=1_000)
        >>> cache.put("a", torch.zeros(100))        # 400 bytes
        >>> cache.put("b", torch.zeros(100))
        >>> cache.put("c", torch.zeros(100))        # "a" is evicted: 1,200 bytes would not fit
        >>> sorted(cache.keys()), cache.bytes_used
        (['b', 'c'], 800)
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.bytes_used = 0
        self._reserved = 0
        #: The most bytes held at once (cache plus reservations), for tests and benchmarks.
        self.peak_bytes = 0

    @property
    def capacity(self) -> int:
        """Bytes the cached tensors may take now: the budget less what batches have reserved."""
        return self.budget - self._reserved

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The tensor of ``key`` (now the most recently used), or ``None``."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        """Keep ``value``, evicting the least recently used tensors until it fits.

        A tensor larger than the whole capacity is not kept (the caller still holds it).
        """
        size = tensor_bytes(value)
        if key in self._items:
            self.bytes_used -= tensor_bytes(self._items.pop(key))
        if size > self.capacity:
            logger.debug("not caching %s (%d bytes; capacity %d)", key, size, self.capacity)
            return
        self._evict_to(self.capacity - size)
        self._items[key] = value
        self.bytes_used += size
        self._note_peak()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for a computation (a batch of probes) while it runs.

        The cache shrinks at once to make room (least recently used first) and stays smaller
        until the computation ends.
        """
        self._reserved += int(nbytes)
        self._evict_to(self.capacity)
        self._note_peak()
        try:
            yield
        finally:
            self._reserved -= int(nbytes)

    def _evict_to(self, limit: int) -> None:
        while self._items and self.bytes_used > max(0, limit):
            _, value = self._items.popitem(last=False)
            self.bytes_used -= tensor_bytes(value)

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.bytes_used + self._reserved)
