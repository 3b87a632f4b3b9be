"""The one per-process cache: loads once per key, replaces stale values, keeps at most max_items."""

from __future__ import annotations

from tasks.cache import ProcessCache


def test_loads_once_replaces_stale_and_evicts_the_least_recent() -> None:
    loads: list[str] = []
    cache: ProcessCache[str] = ProcessCache(max_items=2)

    def load(key: str):
        return lambda: loads.append(key) or f"{key}{len(loads)}"

    assert cache.get("a", load("a")) == "a1" and cache.get("a", load("a")) == "a1"
    assert cache.get("a", load("a"), fresh=lambda v: v != "a1") == "a2", "a stale value is reloaded"
    cache.get("b", load("b"))
    cache.get("a", load("a"))  # a is now the most recent
    cache.get("c", load("c"))  # evicts b, not a
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    assert loads == ["a", "a", "b", "c"]
