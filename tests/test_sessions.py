"""consensus.sessions: the replicated exactly-once session table, with sessions registered explicitly."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from consensus.sessions import Outcome, SessionRef, SessionTable


def ok(value: Any) -> Outcome:
    return "ok", value


def refused(code: str = "conflict") -> Outcome:
    return "err", {"code": code, "message": "refused", "maybe_applied": False}


def ref(session: int, seq: int, low_water: int = 1) -> SessionRef:
    return SessionRef(session, seq, low_water)


class Machine:
    """Counts what was applied; answers with a queue of outcomes, or ("ok", n) by default."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.applied = 0
        self.outcomes = list(outcomes)

    def __call__(self) -> Outcome:
        outcome = self.outcomes.pop(0) if self.outcomes else ok(self.applied + 1)
        if outcome[0] == "ok":
            self.applied += 1
        return outcome


def test_session_ref_is_frozen_value():
    r = SessionRef(7, 3, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 4  # type: ignore[misc]
    assert r == SessionRef(7, 3, 2)
    assert hash(r) == hash(SessionRef(7, 3, 2))


def test_opened_sessions_get_numbers_never_handed_out_again():
    table = SessionTable(max_sessions=2)
    numbers = [table.open() for _ in range(5)]
    assert numbers == [1, 2, 3, 4, 5]
    assert len(table) == 2  # only the two most recent are held


def test_a_session_never_opened_is_expired_not_new():
    table = SessionTable(max_sessions=10)
    assert table.lookup(ref(1, 1, 1)) == ("expired", None)
    machine = Machine()
    outcome = table.run(ref(1, 1, 1), machine)
    assert outcome[0] == "err" and outcome[1]["code"] == "session_expired"
    assert machine.applied == 0


def test_a_retry_returns_the_first_result_without_applying_again():
    table = SessionTable(max_sessions=10)
    s = table.open()
    machine = Machine()
    assert table.run(ref(s, 1), machine) == ok(1)
    assert table.run(ref(s, 1), machine) == ok(1)
    assert table.run(ref(s, 2), machine) == ok(2)
    assert machine.applied == 2


def test_a_refused_command_is_not_remembered_so_its_retry_runs_again():
    """Issue 9.2: a put refused on a locked key must not get the same refusal on every retry."""
    table = SessionTable(max_sessions=10)
    s = table.open()
    machine = Machine(refused(), refused())
    assert table.run(ref(s, 1), machine) == refused()
    assert table.run(ref(s, 1), machine) == refused()
    assert table.run(ref(s, 1), machine) == ok(1)  # the lock is gone: applied now, once
    assert table.run(ref(s, 1), machine) == ok(1)
    assert machine.applied == 1


def test_done_result_may_be_a_falsy_value():
    table = SessionTable(max_sessions=10)
    s = table.open()
    assert table.run(ref(s, 1), lambda: ok(None)) == ok(None)
    assert table.lookup(ref(s, 1)) == ("done", ok(None))


def test_retry_with_higher_low_water_still_finds_its_result():
    # The client recomputes low_water on every attempt; seq itself is still awaited.
    table = SessionTable(max_sessions=10)
    s = table.open()
    table.run(ref(s, 1, 1), lambda: ok("r1"))
    table.run(ref(s, 2, 1), lambda: ok("r2"))
    assert table.lookup(ref(s, 2, 2)) == ("done", ok("r2"))


def test_low_water_trims_acknowledged_results():
    table = SessionTable(max_sessions=10)
    s = table.open()
    for seq in (1, 2, 3):
        table.run(ref(s, seq, 1), lambda seq=seq: ok(f"r{seq}"))
    table.run(ref(s, 4, 3), lambda: ok("r4"))  # the client awaits nothing below 3
    assert table.lookup(ref(s, 3, 3)) == ("done", ok("r3"))
    assert table.lookup(ref(s, 4, 3)) == ("done", ok("r4"))
    assert set(table._sessions[s].results) == {3, 4}  # noqa: SLF001 - memory bound is the point


def test_a_refusal_still_moves_the_low_water():
    table = SessionTable(max_sessions=10)
    s = table.open()
    table.run(ref(s, 1, 1), lambda: ok("r1"))
    table.run(ref(s, 2, 2), lambda: refused())
    assert table._sessions[s].results == {}  # noqa: SLF001
    assert table.lookup(ref(s, 1, 1)) == ("expired", None)


def test_a_session_runs_only_commands_within_its_low_water_window_and_forgets_no_result_to_make_room():
    """A client that kept low_water at 1 grew its session's results without bound, on every replica."""
    table = SessionTable(max_sessions=10, max_results_per_session=3)
    s = table.open()
    machine = Machine()
    assert [table.run(ref(s, seq, 1), machine) for seq in (1, 2, 3)] == [ok(1), ok(2), ok(3)]
    refusal = table.run(ref(s, 4, 1), machine)
    assert refusal[0] == "err" and refusal[1]["code"] == "unavailable" and refusal[1]["maybe_applied"] is False
    assert "max_results_per_session" in refusal[1]["message"]
    assert table.run(ref(s, 1, 1), machine) == ok(1)  # every result it may still ask for is held
    assert machine.applied == 3
    assert table.run(ref(s, 4, 2), machine) == ok(4)  # its low water rose: the window moved, seq 4 runs once
    assert set(table._sessions[s].results) == {2, 3, 4}  # noqa: SLF001 - memory bound is the point
    assert table.run(ref(s, 4, 2), machine) == ok(4) and machine.applied == 4


def test_seq_below_its_own_low_water_is_expired():
    table = SessionTable(max_sessions=10)
    s = table.open()
    table.run(ref(s, 5, 5), lambda: ok("r5"))
    assert table.lookup(ref(s, 3, 4)) == ("expired", None)


def test_lru_eviction_keeps_at_most_max_sessions():
    table = SessionTable(max_sessions=2)
    a, b = table.open(), table.open()
    table.run(ref(a, 1), lambda: ok("a1"))  # a is now the most recently used
    c = table.open()  # evicts b, the least recently used
    assert len(table) == 2
    assert table.lookup(ref(a, 1)) == ("done", ok("a1"))
    assert table.lookup(ref(c, 1)) == ("new", None)
    assert table.lookup(ref(b, 1)) == ("expired", None)  # forgotten: never new again


def test_lookup_does_not_refresh_lru_order():
    # Only applying commands may change replicated state.
    table = SessionTable(max_sessions=2)
    a = table.open()
    table.run(ref(a, 1), lambda: ok("a1"))
    b = table.open()
    table.run(ref(b, 1), lambda: ok("b1"))
    assert table.lookup(ref(a, 1)) == ("done", ok("a1"))
    table.open()
    assert table.lookup(ref(a, 1)) == ("expired", None)  # a was still the oldest
    assert table.lookup(ref(b, 1)) == ("done", ok("b1"))


def test_a_late_retry_of_a_first_command_after_eviction_is_not_applied():
    """Issue 9.6: before, an evicted client's seq 1 (low_water 1) looked new and was applied twice."""
    table = SessionTable(max_sessions=1)
    a = table.open()
    machine = Machine()
    assert table.run(ref(a, 1, 1), machine) == ok(1)
    table.open()  # evicts a
    outcome = table.run(ref(a, 1, 1), machine)
    assert outcome[0] == "err" and outcome[1]["code"] == "session_expired"
    assert machine.applied == 1


def test_replicas_applying_the_same_commands_agree(seed: int) -> None:
    # Determinism: the table is part of the replicated state.
    rng = random.Random(seed)
    steps: list[tuple[str, Any]] = []
    clients: list[list[int]] = []  # per client: [session index, next seq]
    for _ in range(2000):
        if not clients or rng.random() < 0.05:
            steps.append(("open", None))
            clients.append([len([s for s in steps if s[0] == "open"]), 1])
            continue
        client = rng.choice(clients)
        seq = client[1]
        client[1] += 1
        steps.append(("run", (client[0], seq, rng.randint(max(1, seq - 3), seq), rng.random() < 0.2)))
    tables = [SessionTable(max_sessions=7) for _ in range(3)]
    for table in tables:
        for i, (kind, arg) in enumerate(steps):
            if kind == "open":
                table.open()
            else:
                session, seq, low, refuse = arg
                table.run(SessionRef(session, seq, low), lambda i=i, refuse=refuse: refused() if refuse else ok(i))
    assert len(tables[0]) == 7
    assert list(tables[0]._sessions.items()) == list(tables[1]._sessions.items())  # noqa: SLF001
    assert list(tables[1]._sessions.items()) == list(tables[2]._sessions.items())  # noqa: SLF001


def test_duplicate_of_trimmed_command_is_not_new():
    table = SessionTable(max_sessions=10)
    s = table.open()
    table.run(ref(s, 1, 1), lambda: ok("r1"))
    table.run(ref(s, 2, 2), lambda: ok("r2"))  # the client received r1 and moved on; this trims seq 1
    # a delayed duplicate of the original seq-1 request (low_water 1) reaches the log
    assert table.lookup(ref(s, 1, 1)) == ("expired", None)
