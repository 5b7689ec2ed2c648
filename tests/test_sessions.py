"""consensus.sessions: the replicated exactly-once session table."""

from __future__ import annotations

import dataclasses
import random

import pytest

from consensus.sessions import SessionRef, SessionTable

A = b"a" * 16
B = b"b" * 16
C = b"c" * 16


def ref(client: bytes, seq: int, low_water: int = 1) -> SessionRef:
    return SessionRef(client, seq, low_water)


def test_session_ref_is_frozen_value():
    r = SessionRef(A, 3, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 4  # type: ignore[misc]
    assert r == SessionRef(A, 3, 2)
    assert hash(r) == hash(SessionRef(A, 3, 2))


def test_unknown_client_first_command_is_new():
    table = SessionTable(max_sessions=10)
    assert table.lookup(ref(A, 1, 1)) == ("new", None)
    assert len(table) == 0  # lookup alone does not create a session


def test_recorded_result_is_returned_for_retries():
    table = SessionTable(max_sessions=10)
    table.record(ref(A, 1, 1), ("ok", 41))
    table.record(ref(A, 2, 1), ("err", {"code": "invalid_request"}))
    assert table.lookup(ref(A, 1, 1)) == ("done", ("ok", 41))
    assert table.lookup(ref(A, 2, 1)) == ("done", ("err", {"code": "invalid_request"}))
    assert table.lookup(ref(A, 3, 1)) == ("new", None)
    # results are per client
    assert table.lookup(ref(B, 1, 1)) == ("new", None)
    assert len(table) == 1


def test_done_result_may_be_a_falsy_value():
    table = SessionTable(max_sessions=10)
    table.record(ref(A, 1), None)
    assert table.lookup(ref(A, 1)) == ("done", None)


def test_retry_with_higher_low_water_still_finds_its_result():
    # The client recomputes low_water on every attempt; seq itself is still awaited.
    table = SessionTable(max_sessions=10)
    table.record(ref(A, 1, 1), "r1")
    table.record(ref(A, 2, 1), "r2")
    assert table.lookup(ref(A, 2, 2)) == ("done", "r2")


def test_low_water_trims_acknowledged_results():
    table = SessionTable(max_sessions=10)
    for seq in (1, 2, 3):
        table.record(ref(A, seq, 1), f"r{seq}")
    # seq 4 arrives saying the client awaits nothing below 3
    table.record(ref(A, 4, 3), "r4")
    # 1 and 2 were dropped; 3 (still awaited) and 4 are kept
    assert table.lookup(ref(A, 3, 3)) == ("done", "r3")
    assert table.lookup(ref(A, 4, 3)) == ("done", "r4")
    assert table._sessions[A].results == {3: "r3", 4: "r4"}  # noqa: SLF001 - memory bound is the point


def test_seq_below_its_own_low_water_is_expired():
    table = SessionTable(max_sessions=10)
    table.record(ref(A, 5, 5), "r5")
    assert table.lookup(ref(A, 3, 4)) == ("expired", None)


def test_lru_eviction_keeps_at_most_max_sessions():
    table = SessionTable(max_sessions=2)
    table.record(ref(A, 1), "a1")
    table.record(ref(B, 1), "b1")
    table.record(ref(A, 2), "a2")  # A is now the most recently used
    table.record(ref(C, 1), "c1")  # evicts B, the least recently used
    assert len(table) == 2
    assert table.lookup(ref(A, 1)) == ("done", "a1")
    assert table.lookup(ref(C, 1)) == ("done", "c1")
    assert table.lookup(ref(B, 1)) == ("new", None)  # forgotten entirely


def test_lookup_does_not_refresh_lru_order():
    # Only record() (i.e. applied commands) may change replicated state.
    table = SessionTable(max_sessions=2)
    table.record(ref(A, 1), "a1")
    table.record(ref(B, 1), "b1")
    assert table.lookup(ref(A, 1)) == ("done", "a1")
    table.record(ref(C, 1), "c1")
    assert table.lookup(ref(A, 1)) == ("new", None)  # A was still the oldest
    assert table.lookup(ref(B, 1)) == ("done", "b1")


def test_evicted_client_that_could_be_retrying_is_expired():
    table = SessionTable(max_sessions=1)
    table.record(ref(A, 3, 2), "a3")
    table.record(ref(B, 1, 1), "b1")  # evicts A
    # A retries seq 3 (or sends seq 4) with an unknown low_water > 1: maybe applied already
    assert table.lookup(ref(A, 3, 2)) == ("expired", None)
    assert table.lookup(ref(A, 4, 4)) == ("expired", None)
    # a client with low_water 1 is (by the documented rule) a fresh client
    assert table.lookup(ref(A, 1, 1)) == ("new", None)


def test_recording_for_an_evicted_client_starts_a_fresh_session():
    table = SessionTable(max_sessions=1)
    table.record(ref(A, 1), "a1")
    table.record(ref(B, 1), "b1")
    table.record(ref(A, 1), "a1-again")
    assert table.lookup(ref(A, 1)) == ("done", "a1-again")
    assert table.lookup(ref(B, 1)) == ("new", None)


def test_replicas_applying_the_same_commands_agree():
    # Determinism: the table is part of the replicated state.
    rng = random.Random(1234)
    commands = []
    next_seq = {c: 1 for c in range(20)}
    for _ in range(2000):
        client = rng.randrange(20)
        seq = next_seq[client]
        next_seq[client] += 1
        low = rng.randint(max(1, seq - 3), seq)
        commands.append(SessionRef(bytes([client]) * 16, seq, low))
    tables = [SessionTable(max_sessions=7) for _ in range(3)]
    for table in tables:
        for i, r in enumerate(commands):
            if table.lookup(r)[0] == "new":
                table.record(r, i)
    assert len(tables[0]) == 7
    assert list(tables[0]._sessions.items()) == list(tables[1]._sessions.items())  # noqa: SLF001
    assert list(tables[1]._sessions.items()) == list(tables[2]._sessions.items())  # noqa: SLF001


def test_duplicate_of_trimmed_command_is_not_new():
    table = SessionTable(max_sessions=10)
    table.record(ref(A, 1, 1), "r1")
    # the client received r1 and moved on; this trims seq 1
    table.record(ref(A, 2, 2), "r2")
    # a delayed duplicate of the original seq-1 request (low_water 1) reaches the log
    assert table.lookup(ref(A, 1, 1)) != ("new", None)
