"""Exactly-once application of client commands (Raft thesis, section 6.3).

PySyncObj reports ``LEADER_CHANGED``, ``UNKNOWN_OUTCOME`` or simply times out
for commands that may nevertheless be applied later. Clients therefore retry
with the same ``(client_id, seq)``, and this table, kept *inside* the
replicated state, returns the first result instead of applying twice.

Memory stays bounded two ways, both deterministic (the table is part of the
replicated state, so every replica must evict the same entries):

* each command carries the client's ``low_water``: the smallest sequence
  number it still awaits. Results below it were received and are dropped,
  and the table keeps the highest ``low_water`` seen, so a late duplicate of
  a dropped command is refused (``SessionExpired``) instead of re-applied;
* at most ``max_sessions`` clients are remembered, least recently used
  evicted first. A later command of an evicted client that could be a retry
  (``seq`` at or above an unknown ``low_water`` > 1) is refused with
  ``SessionExpired`` rather than risk applying it twice.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SessionRef:
    """Who sent a command, and which of their commands it is."""

    client_id: bytes
    seq: int
    low_water: int


@dataclass(slots=True)
class _Session:
    low_water: int  # the highest low_water this client has sent: everything below was answered
    results: dict[int, Any]


class SessionTable:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, ref: SessionRef) -> tuple[str, Any]:
        """Return ``("new", None)``, ``("done", first_result)`` or ``("expired", None)``."""
        session = self._sessions.get(ref.client_id)
        if session is None:
            return ("expired", None) if ref.low_water > 1 else ("new", None)
        if ref.seq in session.results:
            return "done", session.results[ref.seq]
        if ref.seq < session.low_water:
            return "expired", None  # a late duplicate of a command whose result was trimmed
        return "new", None

    def record(self, ref: SessionRef, result: Any) -> None:
        session = self._sessions.pop(ref.client_id, None)
        if session is None:
            session = _Session(ref.low_water, {})
        elif ref.low_water > session.low_water:
            session.low_water = ref.low_water
            for seq in [s for s in session.results if s < ref.low_water]:
                del session.results[seq]
        session.results[ref.seq] = result
        self._sessions[ref.client_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
