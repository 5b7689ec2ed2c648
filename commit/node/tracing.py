"""What each transaction cost: protocol messages by type, forced writes, and message delays.

Every node keeps, per transaction id, the protocol messages it sent (type,
from, to, hop) and the forced writes it made (durable writes some message
had to wait for). ``hop`` is the message's depth on the critical path: the
client's commit request is hop 1 and every message caused by a message of
hop h has hop h+1, so the largest hop of a transaction is the number of
message delays until the last participant learned the outcome.

``python node.py trace TXID`` merges the nodes' records into one sequence
diagram (``commit.tooling.traces``); the tests compare the counts with Gray &
Lamport's formulas. Bounded: the oldest transactions are forgotten first.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from consensus.bounded import BoundedTable


class Tracer:
    def __init__(self, node_id: str, max_traced: int) -> None:
        self.node_id = node_id
        self.events: BoundedTable[str, list[dict[str, Any]]] = BoundedTable(max_traced)
        self.messages: Counter[str] = Counter()
        self.forced_writes: Counter[str] = Counter()

    def _add(self, txid: str, event: dict[str, Any], at: float | None = None) -> None:
        events = self.events.get(txid)
        if events is None:
            events = self.events.remember(txid, [])
        events.append({"t": time.time() if at is None else at, "node": self.node_id, **event})

    def sent(self, txid: str, kind: str, dst: str, hop: int, at: float | None = None) -> None:
        """A message sent at ``at`` (default now): recorded late when the destination was known only then."""
        self.messages[kind] += 1
        self._add(txid, {"event": "message", "kind": kind, "src": self.node_id, "dst": dst, "hop": hop}, at)

    def forced(self, txid: str, what: str) -> None:
        self.forced_writes[what] += 1
        self._add(txid, {"event": "forced_write", "kind": what})

    def of(self, txid: str) -> list[dict[str, Any]]:
        return list(self.events.get(txid, []))
