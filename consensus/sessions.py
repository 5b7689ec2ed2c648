"""Exactly-once application of client commands (Raft thesis, section 6.3).

PySyncObj reports ``LEADER_CHANGED``, ``UNKNOWN_OUTCOME`` or simply times out
for commands that may nevertheless be applied later. Clients therefore retry
with the same ``(session, seq)``, and this table, kept *inside* the
replicated state, returns the first result instead of applying twice.

Sessions are registered explicitly, as the thesis does: ``open`` hands out a
session number the table never hands out again (a counter in the replicated
state), and a command under a number the table does not hold is refused
with ``SessionExpired``, never taken as new. That is what keeps a late retry
of a client's first command from being applied a second time after its
session was evicted (issue 9.6): an evicted session is simply unknown, and
an unknown session is never new. A client whose session expired opens a new
one and carries on.

Only a command that was applied is remembered. One that the state machine
refused (a ``ClusterError``: a conflict on a locked key, a bad command)
changed nothing, so a retry with the same seq runs again instead of getting
the refusal back for ever (issue 9.2: a put on a key a transaction held
failed after its whole deadline although the lock was released at once).

Memory stays bounded three ways, all deterministic (the table is part of the
replicated state, so every replica must evict the same entries):

* each command carries the client's ``low_water``: the smallest sequence
  number it still awaits. Results below it were received and are dropped,
  and the table keeps the highest ``low_water`` seen, so a late duplicate of
  a dropped command is refused (``SessionExpired``) instead of re-applied;
* a session runs only commands numbered below its low water plus
  ``max_results_per_session``, so it never holds more results than that. A
  client that keeps its low water down (a command it awaits for long, or a
  hostile client that never moves it) gets every command beyond that window
  refused with ``Unavailable`` (not applied, not remembered) until one of its
  commands carries a higher low water. Nothing is dropped to make room, so
  exactly-once holds: every result the client may still ask for stays, the
  command that holds the low water down always runs, and a refused command is
  retried like any unavailable one (``commit.retry``) while the client's
  earlier commands finish and its low water rises;
* at most ``max_sessions`` sessions are remembered, least recently used
  evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.errors import SessionExpired, Unavailable

Outcome = tuple[str, Any]  # ("ok", result) or ("err", error in wire form)
MAX_RESULTS_PER_SESSION = 10_000  # for tables built without one: the default of limits.max_results_per_session


@dataclass(frozen=True, slots=True)
class SessionRef:
    """Which session sent a command (a number from ``SessionTable.open``), and which of its commands it is."""

    session_id: int
    seq: int
    low_water: int


@dataclass(slots=True)
class _Session:
    low_water: int  # the highest low_water this session has sent: everything below was answered
    results: dict[int, Outcome]


class SessionTable:
    def __init__(self, max_sessions: int, max_results_per_session: int = MAX_RESULTS_PER_SESSION) -> None:
        self.max_sessions = max_sessions
        self.max_results_per_session = max_results_per_session
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self) -> int:
        """Register a new session; its number is never handed out again."""
        session_id = self._next_id
        self._next_id += 1
        self._sessions[session_id] = _Session(1, {})
        self._evict()
        return session_id

    def lookup(self, ref: SessionRef) -> tuple[str, Outcome | None]:
        """Return ``("new", None)``, ``("done", first_outcome)`` or ``("expired", None)``."""
        session = self._sessions.get(ref.session_id)
        if session is None:
            return "expired", None  # evicted, or never opened: either way it may not be new
        if ref.seq in session.results:
            return "done", session.results[ref.seq]
        if ref.seq < session.low_water:
            return "expired", None  # a late duplicate of a command whose result was trimmed
        return "new", None

    def run(self, ref: SessionRef, apply: Callable[[], Outcome]) -> Outcome:
        """Apply a session's command at most once: the first outcome it had, or ``apply()`` now."""
        state, first = self.lookup(ref)
        if state == "done":
            assert first is not None
            return first
        if state == "expired":
            return "err", SessionExpired(
                f"session {ref.session_id} is no longer held for seq {ref.seq} "
                f"(evicted, or its result trimmed); the command may have been applied"
            ).to_wire()
        session = self._used(ref)
        if ref.seq >= session.low_water + self.max_results_per_session:
            return "err", Unavailable(
                f"session {ref.session_id} runs commands below {session.low_water + self.max_results_per_session} "
                f"only: its low water {session.low_water} plus limits.max_results_per_session; seq {ref.seq} "
                f"is refused until the client's earlier commands finish", maybe_applied=False,
            ).to_wire()
        outcome = apply()
        if outcome[0] == "ok":
            session.results[ref.seq] = outcome
        return outcome

    def _used(self, ref: SessionRef) -> _Session:
        """The session was used: trim below its low water, and mark it the most recent."""
        session = self._sessions.pop(ref.session_id)
        if ref.low_water > session.low_water:
            session.low_water = ref.low_water
            for seq in [s for s in session.results if s < ref.low_water]:
                del session.results[seq]
        self._sessions[ref.session_id] = session
        return session

    def _evict(self) -> None:
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
