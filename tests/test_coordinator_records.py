"""``commit.coordinator.CoordinatorState``: raft-2pc transaction records, CAS decisions, fencing."""

from __future__ import annotations

import pytest

from commit.outcomes import ABORTED, COMMITTED, PENDING
from commit.node.state_machines.coordinator_group import CoordinatorState, TxnRecord
from consensus.errors import InvalidRequest

A = "raft-2pc:" + "a" * 32
B = "raft-2pc:" + "b" * 32
C = "raft-2pc:" + "c" * 32
PARTS = ("shard-0", "shard-1")


def test_begin_records_a_pending_transaction():
    coord = CoordinatorState()
    assert coord.apply(("begin", A, PARTS)) == PENDING
    assert coord.txns[A] == TxnRecord(PARTS, None)
    assert coord.outcome_of(A) == PENDING
    assert A not in coord.decided
    # A duplicated begin (a retried proposal) changes nothing.
    assert coord.apply(("begin", A, ("shard-9",))) == PENDING
    assert coord.txns[A] == TxnRecord(PARTS, None)


def test_unknown_txid_has_no_outcome():
    assert CoordinatorState().outcome_of(A) is None


@pytest.mark.parametrize("first,second", [(COMMITTED, ABORTED), (ABORTED, COMMITTED)])
def test_decide_is_compare_and_set_first_decision_wins(first, second):
    coord = CoordinatorState()
    coord.apply(("begin", A, PARTS))
    assert coord.apply(("decide", A, first)) == first
    assert coord.txns[A].outcome == first
    assert coord.decided[A] == first
    assert coord.apply(("decide", A, second)) == first
    assert coord.apply(("decide", A, first)) == first
    assert coord.txns[A].outcome == first
    assert coord.decided[A] == first
    assert coord.outcome_of(A) == first
    # begin of a decided txn returns the decision, not a fresh record.
    assert coord.apply(("begin", A, PARTS)) == first


def test_decide_without_a_record_is_also_first_wins():
    coord = CoordinatorState()
    assert coord.apply(("decide", A, COMMITTED)) == COMMITTED
    assert A not in coord.txns
    assert coord.apply(("decide", A, ABORTED)) == COMMITTED
    assert coord.outcome_of(A) == COMMITTED


def test_fence_of_unknown_txid_records_abort_and_a_later_begin_learns_it():
    coord = CoordinatorState()
    assert coord.apply(("fence", A)) == ABORTED
    assert coord.decided[A] == ABORTED
    assert coord.outcome_of(A) == ABORTED
    # The old leader's delayed begin arrives: it must not start the transaction.
    assert coord.apply(("begin", A, PARTS)) == ABORTED
    assert A not in coord.txns
    assert coord.in_flight() == []
    # Nor can a late decide commit it.
    assert coord.apply(("decide", A, COMMITTED)) == ABORTED


def test_fence_of_in_flight_txn_returns_pending_and_does_not_decide():
    coord = CoordinatorState()
    coord.apply(("begin", A, PARTS))
    assert coord.apply(("fence", A)) == PENDING
    assert coord.txns[A].outcome is None
    assert A not in coord.decided
    # The coordinator may still commit it.
    assert coord.apply(("decide", A, COMMITTED)) == COMMITTED
    assert coord.apply(("fence", A)) == COMMITTED


def test_fence_of_decided_txn_returns_its_outcome():
    coord = CoordinatorState()
    coord.apply(("decide", A, COMMITTED))
    assert coord.apply(("fence", A)) == COMMITTED
    assert coord.decided[A] == COMMITTED


def test_finish_removes_only_decided_records():
    coord = CoordinatorState()
    coord.apply(("begin", A, PARTS))
    coord.apply(("begin", B, PARTS))
    # Not decided: finish is refused (returns no outcome) and keeps the record.
    assert coord.apply(("finish", A)) is None
    assert A in coord.txns
    coord.apply(("decide", A, COMMITTED))
    assert coord.apply(("finish", A)) == COMMITTED
    assert A not in coord.txns
    assert coord.outcome_of(A) == COMMITTED  # still answerable from the decided table
    assert [txid for txid, _ in coord.in_flight()] == [B]
    # Finishing again, or finishing an unknown txid, is harmless.
    assert coord.apply(("finish", A)) == COMMITTED
    assert coord.apply(("finish", C)) is None
    assert C not in coord.decided
    assert [txid for txid, _ in coord.in_flight()] == [B]


def test_in_flight_lists_unfinished_records_in_begin_order():
    coord = CoordinatorState()
    for txid in (C, A, B):
        coord.apply(("begin", txid, (txid[-1:],)))
    coord.apply(("decide", A, ABORTED))
    flights = coord.in_flight()
    assert [txid for txid, _ in flights] == [C, A, B]
    assert flights[1][1] == TxnRecord(("a",), ABORTED)  # decided but not finished: still in flight
    assert flights[0][1] == TxnRecord(("c",), None)
    coord.apply(("finish", A))
    assert [txid for txid, _ in coord.in_flight()] == [C, B]
    # in_flight is a copy: mutating it does not touch the state.
    coord.in_flight().clear()
    assert len(coord.txns) == 2


def test_epochs_start_at_zero_and_grow_by_one():
    coord = CoordinatorState()
    assert coord.epoch == 0
    assert [coord.apply(("new_epoch",)) for _ in range(3)] == [1, 2, 3]
    assert coord.epoch == 3


def test_decided_table_is_bounded_but_records_in_flight_still_answer():
    coord = CoordinatorState(max_decided=2)
    coord.apply(("begin", A, PARTS))
    coord.apply(("decide", A, COMMITTED))
    coord.apply(("fence", B))
    coord.apply(("fence", C))
    assert list(coord.decided) == [B, C]
    # A's record is not finished, so its outcome is still known.
    assert coord.outcome_of(A) == COMMITTED
    assert coord.apply(("decide", A, ABORTED)) == COMMITTED


@pytest.mark.parametrize(
    "command",
    [
        ("decide", A, "maybe"),
        ("decide", A, PENDING),
        ("begin", A, ["shard-0"]),
        ("fence",),
        ("finish", 7),
        ("new_epoch", 1),
    ],
)
def test_malformed_commands_are_rejected_without_side_effects(command):
    coord = CoordinatorState()
    with pytest.raises(InvalidRequest):
        coord.apply(command)
    assert coord.txns == {} and list(coord.decided) == [] and coord.epoch == 0
