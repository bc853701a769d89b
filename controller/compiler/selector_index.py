"""Find the selectors that match a label set without testing every selector.

Each selector is filed under one label pair it requires (``matchLabels`` or a single-valued
``In``); an object can only match selectors filed under one of its own pairs, plus the few
selectors that require no pair at all. With thousands of policies this turns a per-pod scan of
every selector into a handful of dictionary lookups.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Generic, TypeVar

from controller.model import LabelSelector

K = TypeVar("K", bound=Hashable)


class SelectorIndex(Generic[K]):
    def __init__(self) -> None:
        self._selectors: dict[K, LabelSelector] = {}
        self._by_pair: dict[tuple[str, str], set[K]] = {}
        self._unindexed: set[K] = set()

    def __len__(self) -> int:
        return len(self._selectors)

    def add(self, key: K, selector: LabelSelector) -> None:
        self.remove(key)
        self._selectors[key] = selector
        pairs = selector.required_pairs()
        if pairs:
            self._by_pair.setdefault(pairs[0], set()).add(key)
        else:
            self._unindexed.add(key)

    def remove(self, key: K) -> None:
        selector = self._selectors.pop(key, None)
        if selector is None:
            return
        pairs = selector.required_pairs()
        if pairs:
            bucket = self._by_pair[pairs[0]]
            bucket.discard(key)
            if not bucket:
                del self._by_pair[pairs[0]]
        else:
            self._unindexed.discard(key)

    def matching(self, labels: Mapping[str, str]) -> Iterator[K]:
        """Every key whose selector matches ``labels``."""
        selectors = self._selectors
        for key in self._unindexed:
            if selectors[key].matches(labels):
                yield key
        by_pair = self._by_pair
        for pair in labels.items():
            for key in by_pair.get(pair, ()):
                if selectors[key].matches(labels):
                    yield key
