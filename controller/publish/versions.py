"""resourceVersion bookkeeping: which of two states of an object is newer (pure).

The API only promises that a resourceVersion can be compared for equality, but every API
server in use (etcd revisions) hands out integers that only grow, and kopf, the watch and our
own writes deliver states of one object in no guaranteed order relative to each other. So
versions are compared as integers when both parse; when one does not, nothing can be said and
the caller's safe default applies (``newer`` takes the new state, ``not_after`` trusts the
list).

``Versions`` remembers the version of every object fed to the compiler and, for deleted ones, a
tombstone (the version of the deletion): a late event older than what is held is ignored, and
a re-list can tell which held objects it proves gone.
"""

from __future__ import annotations

from collections.abc import Set


def _order(a: str | None, b: str | None) -> int | None:
    """-1, 0 or 1 as ``a`` is older, equal or newer than ``b``; None when unknown."""
    try:
        x, y = int(a or ""), int(b or "")
    except ValueError:
        return None
    return (x > y) - (x < y)


def newer(version: str | None, than: str | None) -> bool:
    """Whether a state at ``version`` should replace one held at ``than`` (unordered: yes)."""
    order = _order(version, than)
    return order is None or order > 0


def not_after(version: str | None, point: str | None) -> bool:
    """Whether ``version`` is at or before ``point`` (unordered: yes, the list is the truth)."""
    order = _order(version, point)
    return order is None or order <= 0


class Versions:
    """Per kind: name -> resourceVersion of what was fed, and tombstones of deletions."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, str]] = {}
        self._tombstones: dict[str, dict[str, str]] = {}

    def admit(self, kind: str, key: str, version: str) -> bool:
        """An object state arrived (event or listing): feed it iff newer than what is held
        (or than its deletion)."""
        held = self._held.setdefault(kind, {})
        tombstones = self._tombstones.setdefault(kind, {})
        last = held.get(key, tombstones.get(key))
        if last is not None and not newer(version, last):
            return False
        held[key] = version
        tombstones.pop(key, None)
        return True

    def delete(self, kind: str, key: str, version: str) -> bool:
        """A deletion at ``version``: forget the object iff it is not older than what is held
        (a deletion carries the version of the delete, newer than any state before it)."""
        held = self._held.setdefault(kind, {})
        tombstones = self._tombstones.setdefault(kind, {})
        last = held.get(key, tombstones.get(key))
        if last is not None and not newer(version, last) and version != last:
            return False
        held.pop(key, None)
        tombstones[key] = version
        return True

    def absent(self, kind: str, listed: Set[str], list_version: str) -> list[str]:
        """Held objects a complete listing at ``list_version`` proves deleted: not in it, and
        held at a version the listing already covers (a newer one was created after it)."""
        return [
            key
            for key, version in self._held.get(kind, {}).items()
            if key not in listed and not_after(version, list_version)
        ]

    def prune(self, kind: str, list_version: str) -> None:
        """Drop tombstones a complete listing at ``list_version`` makes unnecessary: any state
        older than the listing would be older than the listing itself."""
        tombstones = self._tombstones.get(kind, {})
        for key in [k for k, v in tombstones.items() if not_after(v, list_version)]:
            del tombstones[key]

    def tombstones(self, kind: str) -> int:
        return len(self._tombstones.get(kind, {}))
