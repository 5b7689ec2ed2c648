"""Saga records in the coordinator group's state machine: compare-and-set appends, caps, finished sagas."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from commit.config import Sagas
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.saga_records import HISTORY_FULL
from commit.protocols.saga import COMPENSATED, RUNNING, STUCK
from consensus.errors import InvalidRequest, Unavailable

DEFINITION = {"mode": "saga", "steps": [{"name": "a", "service": "s", "action": "do", "compensation": "undo"}]}
AT = 1000.0


def machine(**caps: int) -> CoordinatorState:
    return CoordinatorState(sagas=replace(Sagas(), **caps))


def test_a_start_is_recorded_once_and_a_second_definition_under_the_same_id_is_refused() -> None:
    state = machine()
    assert state.apply(("saga.start", "x", DEFINITION, AT)) == {"saga": "x", "state": RUNNING, "new": True}
    assert state.apply(("saga.start", "x", DEFINITION, AT + 1))["new"] is False
    with pytest.raises(InvalidRequest, match="another definition"):
        state.apply(("saga.start", "x", {**DEFINITION, "mode": "tcc"}, AT))
    assert state.sagas.get("x").history == [{"event": "started", "at": AT}]  # type: ignore[union-attr]


def test_an_append_at_a_stale_length_is_refused_even_when_it_repeats_the_one_there() -> None:
    """Two runs of one saga make identical events; only the first append of them may win."""
    state = machine()
    state.apply(("saga.start", "x", DEFINITION, AT))
    events = [{"event": "attempt", "step": "a", "op": "action", "attempt": 1}]
    assert state.apply(("saga.append", "x", 1, events, AT + 1)) == {"state": RUNNING, "events": 2}
    for stale in (events, [{"event": "attempt", "step": "a", "op": "action", "attempt": 2}]):
        with pytest.raises(InvalidRequest, match="another orchestrator appended"):
            state.apply(("saga.append", "x", 1, stale, AT + 2))
    assert len(state.sagas.get("x").history) == 2  # type: ignore[union-attr]


def test_a_finished_saga_moves_to_the_bounded_table_and_takes_no_more_events() -> None:
    state = machine(max_remembered_sagas=2)
    for saga in ("a", "b", "c"):
        state.apply(("saga.start", saga, DEFINITION, AT))
        state.apply(("saga.append", saga, 1, [{"event": "state", "state": COMPENSATED, "reason": "r"}], AT))
    assert state.sagas.get("a") is None and state.sagas.get("c") is not None
    assert state.sagas.counts()[COMPENSATED] == 2
    with pytest.raises(InvalidRequest, match="not active"):
        state.apply(("saga.append", "c", 2, [{"event": "attempt"}], AT))


def test_active_sagas_are_capped_and_never_evicted() -> None:
    state = machine(max_active_sagas=2)
    state.apply(("saga.start", "a", DEFINITION, AT))
    state.apply(("saga.start", "b", DEFINITION, AT))
    with pytest.raises(Unavailable, match="max_active_sagas"):
        state.apply(("saga.start", "c", DEFINITION, AT))
    assert state.sagas.resumable() == ["a", "b"]


def test_a_history_that_reaches_its_cap_makes_the_saga_stuck_with_the_reason() -> None:
    state = machine(max_history_events=3)
    state.apply(("saga.start", "x", DEFINITION, AT))
    events = [{"event": "attempt", "step": "a", "op": "action", "attempt": n} for n in (1, 2)]
    assert state.apply(("saga.append", "x", 1, events, AT))["state"] == STUCK
    record = state.sagas.get("x")
    assert record is not None and record.reason == HISTORY_FULL and record.state == STUCK
    assert state.sagas.resumable() == []


def test_commands_of_the_wrong_shape_are_refused_and_change_nothing() -> None:
    state = machine()
    state.apply(("saga.start", "x", DEFINITION, AT))
    for command in [("saga.append", "x", "1", [], AT), ("saga.append", "x", 1, ["not a map"], AT),
                    ("saga.start", "y", "not a map", AT), ("saga.nothing",)]:
        with pytest.raises(InvalidRequest):
            state.apply(command)
    assert list(state.sagas.active) == ["x"] and len(state.sagas.get("x").history) == 1  # type: ignore[union-attr]


def test_records_survive_a_snapshot() -> None:
    state = machine()
    state.apply(("saga.start", "x", DEFINITION, AT))
    copy = pickle.loads(pickle.dumps(state))
    assert copy.sagas.get("x").history == state.sagas.get("x").history  # type: ignore[union-attr]
    assert copy.sagas.finished.cap == state.sagas.finished.cap
