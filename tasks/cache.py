"""One locked, per-process cache for loaded models and indexes.

Prefect runs tasks in threads, so two batches may ask for the same model at once: without the lock both load it
(seconds and gigabytes each). Loading happens under the lock on purpose; a second caller waits for the first
load instead of starting its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ProcessCache(Generic[V]):
    """``get(key, load)``: the cached value, or ``load()``'s result stored under ``key``.

    ``fresh(value)`` false means the cached value is stale (e.g. an index of an older store generation): it is
    replaced, not kept beside the new one, so memory holds one value per key. ``max_items``: keep only the most
    recently used that many (None: all).
    """

    def __init__(self, max_items: int | None = None) -> None:
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.RLock()  # re-entrant: a loader may itself use another cache entry
        self._max = max_items

    def get(self, key: Hashable, load: Callable[[], V], fresh: Callable[[V], bool] | None = None) -> V:
        with self._lock:
            value = self._values.get(key)
            if key in self._values and (fresh is None or fresh(value)):  # type: ignore[arg-type]
                self._values.move_to_end(key)
                return value  # type: ignore[return-value]
            value = load()
            self._values[key] = value
            self._values.move_to_end(key)
            while self._max is not None and len(self._values) > self._max:
                self._values.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
