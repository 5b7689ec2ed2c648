"""A table that forgets in the order of its keys' stamps, and remembers how far it has forgotten.

Why not a cap that cuts the oldest entry (``consensus.bounded``): a table of decided transactions is asked
about keys it no longer holds, and "no entry" must then not be read as "never seen" (which presumed abort
turns into "aborted"). Here every entry carries a stamp (for a transaction, its txid's creation time), the
table forgets only entries stamped below its ``horizon``, and the horizon only rises. So for a key it does
not hold, the table can tell the two cases apart: stamped at or above the horizon, it never held it;
below, it may have, and the only true answer is "forgotten" (``forgotten``). This is the low-water mark
of Gray & Reuter's log truncation ("Transaction Processing", section 9.6: records below the low-water mark
are gone, so a question about them cannot be answered from the log), applied to a table.

``forget_before`` raises the horizon and drops what is below it; ``keep`` spares entries that must stay
whatever their age (a transaction whose participants have not all acknowledged its outcome), and a spared
entry is dropped by a later call once ``keep`` lets it go. A ``cap`` bounds the table even if its owner
never raises the horizon: an insertion beyond it raises the horizon past the lowest stamp instead of
cutting an entry blindly, so the rule above still holds.

Deterministic (a heap of ``(stamp, key)``, no clock), so it can live inside a replicated state machine:
every replica forgets the same entries. Picklable, for snapshots.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from consensus.errors import Unavailable

K = TypeVar("K")
V = TypeVar("V")


class Forgotten(Unavailable):
    """An owner of such a table answered "forgotten": whoever asked stops and acts on nothing (it may
    have been decided either way long ago); raised inside a node, never sent as such."""


class HorizonTable(Generic[K, V]):
    def __init__(self, cap: int, horizon: int = 0) -> None:
        self.cap = cap
        self.horizon = horizon
        self._entries: dict[K, tuple[int, V]] = {}
        self._by_stamp: list[tuple[int, K]] = []  # a heap; an entry replaced with another stamp leaves a stale item

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __getitem__(self, key: K) -> V:
        return self._entries[key][1]

    def get(self, key: K, default: V | None = None) -> V | None:
        entry = self._entries.get(key)
        return entry[1] if entry is not None else default

    def items(self) -> Iterator[tuple[K, V]]:
        return ((key, value) for key, (_, value) in self._entries.items())

    def due(self, horizon: int) -> bool:
        """Whether ``forget_before(horizon)`` may drop something (cheap: the lowest stamp, maybe stale)."""
        return bool(self._by_stamp) and self._by_stamp[0][0] < horizon

    def forgotten(self, stamp: int) -> bool:
        """Whether a key stamped ``stamp`` may have been held and forgotten (when it is not held now)."""
        return stamp < self.horizon

    def remember(self, key: K, stamp: int, value: V) -> V:
        """Set ``key``; beyond the cap, raise the horizon over the lowest stamps until it fits. Returns ``value``."""
        old = self._entries.get(key)
        self._entries[key] = (stamp, value)
        if old is None or old[0] != stamp:
            heapq.heappush(self._by_stamp, (stamp, key))
        while len(self._entries) > self.cap:
            self.forget_before(self._lowest() + 1)
        return value

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return entry[1] if entry is not None else None

    def forget_before(self, horizon: int, keep: Callable[[K], bool] | None = None) -> int:
        """Raise the horizon to ``horizon`` (never lower it) and drop entries stamped below it, except
        those ``keep`` spares; returns how many were dropped."""
        self.horizon = max(self.horizon, horizon)
        dropped = 0
        spared: list[tuple[int, K]] = []
        while self._by_stamp and self._by_stamp[0][0] < self.horizon:
            stamp, key = heapq.heappop(self._by_stamp)
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamp:
                continue  # stale: dropped or re-stamped since
            if keep is not None and keep(key):
                spared.append((stamp, key))
                continue
            del self._entries[key]
            dropped += 1
        for item in spared:
            heapq.heappush(self._by_stamp, item)
        return dropped

    def _lowest(self) -> int:
        while True:
            stamp, key = self._by_stamp[0]
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                return stamp
            heapq.heappop(self._by_stamp)
