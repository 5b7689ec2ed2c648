"""A table that remembers at most ``cap`` entries, forgetting the oldest first.

Why one helper: nodes keep several such tables (traces, Paxos bundles and tallies, sessions: caches
whose lost entries cost a retry, never a wrong answer; decided outcomes, which must not be cut blindly,
are ``consensus.horizon``'s), and inside a replicated state machine the eviction must be deterministic, so that every
replica forgets the same entries: insertion order is, and the cap comes from ``cluster.toml``, which
every replica reads alike. Picklable, for snapshots.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedTable(OrderedDict[K, V]):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def remember(self, key: K, value: V) -> V:
        """Set ``key`` (a new key becomes the newest), then forget the oldest beyond the cap; returns ``value``."""
        self[key] = value
        while len(self) > self.cap:
            self.popitem(last=False)
        return value

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.cap,), None, None, iter(self.items()))
