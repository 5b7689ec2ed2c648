"""The participant-side cores, sans-IO: an acceptor's 2b bundles, the fast learner, 3PC's silence timer."""

from __future__ import annotations

from commit.outcomes import ABORTED, COMMITTED, PREPARED
from commit.protocols.paxos_participant import (
    AcceptorBundles,
    FastLearner,
    PersistAcceptances,
    Send2b,
    SendLearn,
    Vote2a,
)
from commit.protocols.three_phase import COORDINATOR_ROUND, PRECOMMITTED, WAITING, AbortAlone, SilenceTimer, Terminate

PARTS = ("s0", "s1")


def vote(shard: str, value: str = PREPARED, *, accepted: bool = True, fast: bool = False, txid: str = "t",
         hop: int = 2, reason: str = "") -> Vote2a:
    return Vote2a(txid=txid, shard=shard, value=value, reason=reason, participants=PARTS, leader="L", fast=fast,
                  hop=hop, accepted=accepted)


def test_one_bundle_once_every_participant_voted_prepared_persisted_first() -> None:
    bundles = AcceptorBundles(cap=10)
    assert bundles.on_2a(vote("s0")) == []
    assert bundles.on_2a(vote("s1", hop=3)) == [
        PersistAcceptances(txid="t", participants=PARTS),
        Send2b(txid="t", leader="L", values={"s0": PREPARED, "s1": PREPARED}, reasons={}, hop=4),
    ]
    assert bundles.on_2a(vote("s1")) == []  # a duplicate 2a: the bundle went out once


def test_an_aborted_vote_goes_out_at_once_with_its_reason_and_to_every_fast_learner() -> None:
    bundles = AcceptorBundles(cap=10)
    effects = bundles.on_2a(vote("s1", ABORTED, fast=True, reason="read of b'x' is stale"))
    assert effects == [
        PersistAcceptances(txid="t", participants=("s1",)),
        Send2b(txid="t", leader="L", values={"s1": ABORTED}, reasons={"s1": "read of b'x' is stale"}, hop=3),
        SendLearn(txid="t", shard="s0", values={"s1": ABORTED}, participants=PARTS, hop=3),
        SendLearn(txid="t", shard="s1", values={"s1": ABORTED}, participants=PARTS, hop=3),
    ]


def test_a_vote_the_acceptor_refused_reveals_nothing() -> None:
    """A recovery ballot got there first: reporting the value would let a leader count a quorum that never was."""
    bundles = AcceptorBundles(cap=10)
    assert bundles.on_2a(vote("s0", accepted=False)) == []
    assert bundles.on_2a(vote("s1")) == []  # s0's value is not in the bundle, so it is never complete


def test_bundles_are_bounded_forgetting_the_oldest() -> None:
    bundles = AcceptorBundles(cap=1)
    bundles.on_2a(vote("s0", txid="t1"))
    bundles.on_2a(vote("s0", txid="t2"))  # t1's half bundle is forgotten
    assert [type(e) for e in bundles.on_2a(vote("s1", txid="t2"))] == [PersistAcceptances, Send2b]
    assert bundles.on_2a(vote("s1", txid="t1")) == []  # it starts again, with s1 only


def test_the_fast_learner_commits_at_a_quorum_of_prepared_bundles_and_aborts_at_any_aborted() -> None:
    learner = FastLearner(quorum=2, cap=10)
    both = {"s0": PREPARED, "s1": PREPARED}
    assert learner.on_2b("t", "s0", "a0", both, PARTS) is None
    assert learner.on_2b("t", "s0", "a0", both, PARTS) is None  # the same acceptor twice is one
    assert learner.on_2b("t", "s0", "a1", both, PARTS) == COMMITTED
    assert learner.on_2b("u", "s0", "a2", {"s1": ABORTED}, PARTS) == ABORTED


def test_a_participant_acts_after_its_quiet_period_staggered_by_its_place() -> None:
    timer = SilenceTimer(wait_s=1.0, stagger_s=0.5)
    observe = timer.observe
    assert observe("s1", "t", WAITING, COORDINATOR_ROUND, PARTS, False, now=0.0) == []  # first sight
    assert observe("s1", "t", WAITING, COORDINATOR_ROUND, PARTS, False, now=1.4) == []  # 1 + 0.5 x index 1
    assert observe("s1", "t", WAITING, COORDINATOR_ROUND, PARTS, False, now=1.5) == [AbortAlone(txid="t", shard="s1")]
    assert observe("s1", "t", WAITING, COORDINATOR_ROUND, PARTS, False, now=2.0) == []  # a full period again


def test_a_change_of_state_restarts_the_quiet_period_and_precommitted_terminates() -> None:
    timer = SilenceTimer(wait_s=1.0, stagger_s=0.5)
    timer.observe("s0", "t", WAITING, COORDINATOR_ROUND, PARTS, False, now=0.0)
    assert timer.observe("s0", "t", PRECOMMITTED, COORDINATOR_ROUND, PARTS, False, now=1.0) == []
    assert timer.observe("s0", "t", PRECOMMITTED, COORDINATOR_ROUND, PARTS, False, now=1.5) == []
    assert timer.observe("s0", "t", PRECOMMITTED, COORDINATOR_ROUND, PARTS, False, now=2.0) == [
        Terminate(txid="t", shard="s0", participants=PARTS, round=(1, 1), quorum=False)]
    timer.forget_all_but(set())
    assert timer.last_change == {}
