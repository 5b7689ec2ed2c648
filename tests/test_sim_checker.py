"""The simulator's invariant checker, tested on histories and states known to be bad (and one good).

A checker that never fails proves nothing, so each invariant gets a hand-made history that breaks it,
and the whole simulator is run against deliberately broken cores and drivers that it must catch.
"""

from __future__ import annotations

import pytest

from commit.protocols.events import ProtocolError, Vote
from commit.protocols.two_phase import Event, TwoPhaseCoordinator
from commit.node.state_machines.shard import ShardState
from tests.sim.base import ABORTED, COMMITTED, PREPARED, Decided, ShardChanged, ShardRefused
from tests.sim.runs import first_failure
from tests.sim.world import PENDING, HistoryEntry, Replied, World, check

PARTS = {"t1": ("s0", "s1")}


def kinds(history: list[HistoryEntry], shards: dict[str, ShardState] | None = None) -> set[str]:
    return {v.kind for v in check(history, PARTS, shards)}


def good_commit() -> list[HistoryEntry]:
    return [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", PREPARED),
        Decided("store", "t1", COMMITTED),
        Decided("core", "t1", COMMITTED),
        Replied("t1", COMMITTED),
        ShardChanged("s1", "t1", COMMITTED),
        ShardChanged("s0", "t1", COMMITTED),
    ]


def test_a_correct_history_has_no_violation() -> None:
    assert check(good_commit(), PARTS) == []
    aborted = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", ABORTED),  # voted NO
        Decided("store", "t1", ABORTED),
        Replied("t1", ABORTED),
        ShardChanged("s0", "t1", ABORTED),
    ]
    assert check(aborted, PARTS) == []
    assert check([Decided("store", "t1", ABORTED), ShardChanged("s0", "t1", ABORTED)], PARTS) == []


def test_committed_at_one_shard_and_aborted_at_another_is_caught_in_the_history() -> None:
    history = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", PREPARED),
        ShardChanged("s0", "t1", COMMITTED),
        ShardChanged("s1", "t1", ABORTED),
    ]
    violations = check(history, PARTS)
    assert "atomicity" in {v.kind for v in violations}
    assert any("s0 committed" in v.detail and "s1 aborted" in v.detail for v in violations), violations


def test_committed_at_one_shard_and_aborted_at_another_is_caught_in_the_shard_states() -> None:
    s0, s1 = ShardState(), ShardState()
    assert s0.apply(("prepare", "t1", (), ((b"k", b"v"),))) == "yes"
    assert s0.apply(("commit", "t1")) == COMMITTED
    assert s1.apply(("refuse", "t1")) == ABORTED
    assert kinds([], {"s0": s0, "s1": s1}) == {"atomicity"}
    s2 = ShardState()
    assert s2.apply(("prepare", "t1", (), ())) == "yes"
    assert kinds([], {"s0": s0, "s1": s2}) == set()  # committed + still prepared is not (yet) a violation


def test_a_shard_that_changes_its_outcome_is_caught() -> None:
    history = good_commit() + [ShardChanged("s0", "t1", ABORTED)]
    assert "atomicity" in kinds(history)


def test_a_shard_refusing_a_decision_is_caught() -> None:
    history = [ShardRefused("s1", "t1", "commit", "commit of t1, which is aborted here")]
    assert kinds(history) == {"atomicity"}


@pytest.mark.parametrize(
    "second",
    [Decided("store", "t1", ABORTED), Decided("core", "t1", ABORTED), Replied("t1", ABORTED)],
    ids=["store", "core", "reply"],
)
def test_a_decision_that_flips_is_caught(second: HistoryEntry) -> None:
    history = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", PREPARED),
        Decided("store", "t1", COMMITTED),
        second,
    ]
    violations = check(history, PARTS)
    assert "stability" in {v.kind for v in violations}, violations


def test_a_core_flipping_before_anything_is_durable_is_caught() -> None:
    history = [Decided("core", "t1", ABORTED), Decided("core", "t1", COMMITTED)]
    assert "stability" in kinds(history)


def test_a_commit_where_a_participant_never_prepared_is_caught() -> None:
    at_shard = [ShardChanged("s0", "t1", PREPARED), ShardChanged("s0", "t1", COMMITTED)]
    assert kinds(at_shard) == {"validity"}
    in_store = [ShardChanged("s1", "t1", PREPARED), Decided("store", "t1", COMMITTED)]
    assert kinds(in_store) == {"validity"}
    in_core = [ShardChanged("s1", "t1", PREPARED), Decided("core", "t1", COMMITTED)]
    assert kinds(in_core) == {"validity"}


def test_a_commit_after_a_participant_voted_no_is_caught() -> None:
    history = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", ABORTED),  # NO vote: recorded aborted without preparing
        Decided("store", "t1", COMMITTED),
    ]
    assert {"validity", "agreement"} <= kinds(history)


def test_a_shard_outcome_that_contradicts_the_decision_is_caught() -> None:
    history = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", PREPARED),
        Decided("store", "t1", ABORTED),
        ShardChanged("s0", "t1", COMMITTED),
    ]
    assert "agreement" in kinds(history)
    reversed_order = [history[0], history[1], history[3], history[2]]
    assert "agreement" in kinds(reversed_order)


def test_a_reply_that_differs_from_the_outcome_is_caught() -> None:
    history = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", ABORTED),
        Decided("store", "t1", ABORTED),
        Replied("t1", COMMITTED),
    ]
    assert "reply" in kinds(history)
    # a shard outcome that arrives after the reply also counts
    late = [Decided("store", "t1", COMMITTED), Replied("t1", COMMITTED)] + [ShardChanged("s0", "t1", ABORTED)]
    assert "reply" in kinds(late)


def test_a_reply_before_the_decision_is_durable_is_caught() -> None:
    assert kinds([Replied("t1", ABORTED)]) == {"reply"}


def test_a_transaction_the_checker_does_not_know_still_gets_checked() -> None:
    history = [ShardChanged("s0", "tx", COMMITTED), ShardChanged("s1", "tx", ABORTED)]
    assert "atomicity" in kinds(history)


def test_the_checker_rejects_garbage() -> None:
    with pytest.raises(TypeError):
        check(["not an entry"], PARTS)  # type: ignore[list-item]


# -- the whole simulator against known bugs --------------------------------------------


class CommitsDespiteNo(TwoPhaseCoordinator):
    """A broken core: it counts a NO vote as a YES."""

    def handle(self, event: Event) -> list:
        if isinstance(event, Vote) and not event.yes:
            event = Vote(now=event.now, participant=event.participant, yes=True)
        return super().handle(event)


class RejectsLateVotes(TwoPhaseCoordinator):
    """A core with a hole in its transition table: a late (duplicated, delayed) vote after the decision."""

    def handle(self, event: Event) -> list:
        if isinstance(event, Vote) and self.state in ("decided", "done"):
            raise ProtocolError(f"{self.txid}: no transition from {self.state!r} on {event!r}")
        return super().handle(event)


class PresumesAbortTooEarly(World):
    """A broken 2pc driver: it presumes abort whenever its log is empty, even with a live core deciding."""

    def _answer_status(self, txid: str) -> str | None:
        if not self.up:
            return None
        return self.log.get(txid, ABORTED)


class NeverAnswers(World):
    """A broken driver: in-doubt questions go unanswered, so presumed abort never resolves a lost txn."""

    def _answer_status(self, txid: str) -> str | None:
        return None


@pytest.mark.parametrize("protocol", ["2pc", "raft-2pc"])
def test_the_simulator_catches_a_core_that_commits_despite_a_no(protocol: str) -> None:
    failure = first_failure(World, protocol, range(200), core_factory=CommitsDespiteNo)
    assert "validity violation" in str(failure) or "atomicity violation" in str(failure), failure


@pytest.mark.parametrize("protocol", ["2pc", "raft-2pc"])
def test_a_protocol_error_from_the_core_fails_the_run(protocol: str) -> None:
    failure = first_failure(World, protocol, range(200), core_factory=RejectsLateVotes)
    assert "ProtocolError from the core" in str(failure), failure
    assert isinstance(failure.__cause__, ProtocolError)


def test_the_simulator_catches_a_driver_that_presumes_abort_too_early() -> None:
    failure = first_failure(PresumesAbortTooEarly, "2pc", range(300))
    assert "violation" in str(failure), failure


def test_the_simulator_catches_a_world_that_never_settles() -> None:
    failure = first_failure(NeverAnswers, "2pc", range(300))
    assert "liveness" in str(failure), failure


def test_pending_answers_resolve_nothing() -> None:
    world = World("2pc", 7, n_shards=2, n_txns=1)
    (txid,) = world.txns
    world.do(("start", txid))
    world.deliver_all("prepare")
    shard = world.participants[txid][0]
    world.do(("ask", (shard, txid)))
    world.deliver_all("status")
    assert [m.outcome for m in world.bag if m.kind == "answer"] == [PENDING]
    world.deliver_all("answer")
    assert world.shards[shard].state_of(txid) == PREPARED
