"""A least-recently-used map bounded by bytes (the loaded models' parameter memory)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class MemoryLRU(Generic[V]):
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def used_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._items)

    def get(self, key: str) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: str, value: V, size_bytes: int) -> list[tuple[str, V]]:
        """Insert as most recent and return what had to go to fit the budget, oldest first.
        The new entry itself is never evicted: one model larger than the budget is still
        served, alone."""
        self._items[key] = (value, size_bytes)
        self._items.move_to_end(key)
        evicted: list[tuple[str, V]] = []
        while self.used_bytes > self.budget_bytes and len(self._items) > 1:
            old_key, (old_value, _) = self._items.popitem(last=False)
            evicted.append((old_key, old_value))
        return evicted

    def pop(self, key: str) -> V | None:
        item = self._items.pop(key, None)
        return item[0] if item is not None else None
