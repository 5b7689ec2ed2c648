"""Deterministic simulation of Paxos Commit and Faster Paxos Commit (Gray & Lamport 2006): safety under
chaos (also with more than F acceptors down), liveness after healing, recovery by a new leader
incarnation, the blocking with no acceptor quorum, and the Paxos invariants' checker itself.

Every run is fixed by its variant (``classic``, or ``fast`` for Faster Paxos Commit) and an integer
seed (``tests/sim/paxos_world.py``): the seed makes the shards, the transactions, the fault rates and
every scheduling choice. Each example prints ``SIM_SEED=<seed> variant=<variant>``, and a failure's
message repeats it with the last actions. To replay one seed, in every test of this module that draws
a seed::

    SIM_SEED=1234 .venv/bin/python -m pytest tests/test_sim_paxos_commit.py -k '[fast]' -s

(``-k '[classic]'`` for the classic variant; add a test's name to the ``-k`` expression, e.g.
``-k 'healing and [fast]'``, to replay one test; ``-s`` shows the prints). With SIM_SEED set, each
test runs that one seed. From Python::

    from tests.sim.paxos_world import PaxosWorld
    world = PaxosWorld(True, 1234); world.run_chaos(); world.heal(); print("\\n".join(world.trace))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings

from commit.protocols.paxos_commit import PaxosCommitLeader, Phase1b
from consensus.paxos import BALLOT_ZERO, AcceptorState, Ballot, InstanceState
from tests.sim.paxos_world import (
    ACCEPTORS,
    LEADER,
    Accepted,
    PaxosChecker,
    PaxosWorld,
    Promised,
    Sent2b,
    Voted,
    Weights,
    check_paxos,
)
from tests.sim.base import ABORTED, COMMITTED, PREPARED, Decided, ShardChanged, SimulationFailure
from tests.sim.runs import SEEDS, chaos_and_heal, first_failure, two_runs
from tests.sim.world import Replied

CHAOS = settings(max_examples=200, deadline=None, derandomize=False, database=None)
SCRIPTED = settings(max_examples=150, deadline=None, derandomize=False, database=None)
VARIANT = pytest.mark.parametrize("fast", [False, True], ids=["classic", "fast"])


def announce(seed: int, fast: bool) -> None:
    print(f"SIM_SEED={seed} variant={'fast' if fast else 'classic'}")


def chaos_world(fast: bool, seed: int, **kwargs: object) -> PaxosWorld:
    announce(seed, fast)
    return PaxosWorld(fast, seed, **kwargs)  # type: ignore[arg-type]


# -- chaos ----------------------------------------------------------------------------------------


@VARIANT
@CHAOS
@given(seed=SEEDS)
def test_invariants_hold_under_chaos(fast: bool, seed: int) -> None:
    """Reordering, drops, duplicates, leader crashes, up to F acceptors down: every step keeps every invariant."""
    world = chaos_world(fast, seed)
    world.run_chaos()  # raises SimulationFailure at the first violation
    assert world.steps > 0
    assert len(world.down_acceptors()) <= world.f
    assert not world.checker.violations


@VARIANT
@CHAOS
@given(seed=SEEDS)
def test_safety_holds_with_more_than_f_acceptors_down(fast: bool, seed: int) -> None:
    """Any number of acceptors down at once: nothing may decide wrongly (liveness is not asked for)."""
    world = chaos_world(fast, seed, max_down=len(ACCEPTORS))
    world.run_chaos()
    assert not world.checker.violations


@VARIANT
@CHAOS
@given(seed=SEEDS)
def test_every_transaction_decides_after_healing(fast: bool, seed: int) -> None:
    """After the chaos, with the leader up, at most F acceptors down and no more drops: every transaction
    decides at every participant that prepared, no lock is left, and the leader's replies are the outcome."""
    world = chaos_and_heal(chaos_world(fast, seed))
    assert world.settled()
    world.check_settled_outcomes()
    for name, shard in world.shards.items():
        assert not shard.locks and not shard.prepared, name
    for txid in world.txns:
        outcomes = {s for s in world.outcome_at(txid).values() if s is not None}
        assert world.replies(txid) <= outcomes or not outcomes, (txid, world.replies(txid), outcomes)


# -- scripted -------------------------------------------------------------------------------------


def _only_txn(world: PaxosWorld) -> tuple[str, tuple[str, ...]]:
    (txid,) = world.txns
    return txid, world.participants[txid]


def _crash_and_lose_what_reaches_the_leader(world: PaxosWorld) -> None:
    world.do(("crash", None))
    world.drain(lambda m: m.dst == LEADER)  # lost: the leader is down


@VARIANT
@SCRIPTED
@given(seed=SEEDS)
def test_new_leader_recovers_commit_when_every_vote_reached_every_acceptor(fast: bool, seed: int) -> None:
    """All participants voted yes and every 2a reached every acceptor; the leader crashes before any 2b is
    delivered. A shard asks; the new incarnation recovers at a higher ballot and the outcome is committed."""
    announce(seed, fast)
    world = PaxosWorld(fast, seed, n_txns=1)
    txid, parts = _only_txn(world)
    world.do(("start", txid))
    assert world.deliver_all("prepare") == len(parts)
    assert set(world.outcome_at(txid).values()) == {PREPARED}  # one transaction: every vote is yes
    assert world.deliver_all("vote") == len(parts) * len(ACCEPTORS)
    for name, acceptor in world.acceptors.items():
        for p in parts:
            assert acceptor.record((txid, p)) == (BALLOT_ZERO, BALLOT_ZERO, PREPARED), (name, p)
    assert sorted(m.src for m in world.bag if m.kind == "2b") == list(ACCEPTORS)  # one bundle each
    assert not world.replies(txid)

    _crash_and_lose_what_reaches_the_leader(world)
    for index in reversed(range(len(world.bag))):  # fast: the bundles to the shards are lost too
        assert world.bag[index].kind == "learn"
        world.do(("drop", index))
    world.do(("restart", ()))
    if world.rng.random() < 0.5:  # F acceptors down does not matter
        world.do(("down", world.rng.choice(ACCEPTORS)))
    asker = world.rng.choice(parts)
    world.do(("ask", (asker, txid)))
    world.drain()

    assert world.replies(txid) == {COMMITTED}
    assert world.ballots_used == [(2, 0, 1)]
    for p in parts:
        # The phase-1b answers report "prepared" accepted at ballot 0 by a quorum: already chosen, so the
        # new leader learns it there and proposes nothing at its own ballot.
        assert world.checker.chosen_values((txid, p)) == {PREPARED}
        assert world.checker.chosen_at((txid, p)) == {BALLOT_ZERO: PREPARED}
    assert not [m for m in world.bag if m.kind == "2a"]
    assert set(world.outcome_at(txid).values()) == {COMMITTED}
    assert world.settled()
    world.heal()
    world.check_settled_outcomes()


@VARIANT
@SCRIPTED
@given(seed=SEEDS)
def test_recovery_aborts_an_instance_whose_vote_reached_no_acceptor(fast: bool, seed: int) -> None:
    """The leader crashes before one participant's 2a reached any acceptor: the recovery finds no value
    accepted for that instance and chooses "aborted", so the transaction aborts, even once the late
    votes arrive."""
    announce(seed, fast)
    world = PaxosWorld(fast, seed, n_txns=1)
    txid, parts = _only_txn(world)
    late = world.rng.choice(parts)
    world.do(("start", txid))
    world.deliver_all("prepare")
    world.deliver_all("vote", lambda m: m.src != late)
    assert not any(m.kind in ("2b", "learn") for m in world.bag)  # no acceptor has every vote: no bundle
    _crash_and_lose_what_reaches_the_leader(world)
    world.do(("restart", ()))
    down = world.rng.choice(ACCEPTORS) if world.rng.random() < 0.5 else None
    if down is not None:
        world.do(("down", down))
    world.do(("ask", (world.rng.choice(parts), txid)))
    world.drain(lambda m: not (m.kind == "vote" and m.src == late))

    assert world.replies(txid) == {ABORTED}
    chosen = world.checker.chosen_at((txid, late))
    assert set(chosen.values()) == {ABORTED} and min(chosen) >= (2, 0, 1), chosen
    for p in parts:
        if p != late:
            assert PREPARED in world.checker.chosen_values((txid, p))  # its vote reached every acceptor

    if down is not None:
        world.do(("up", down))
    assert world.deliver_all("vote") == len(ACCEPTORS)  # the late votes arrive
    assert PREPARED not in world.checker.chosen_values((txid, late))
    world.heal()
    world.check_settled_outcomes()
    assert set(world.outcome_at(txid).values()) == {ABORTED}
    assert world.replies(txid) == {ABORTED}


@VARIANT
@SCRIPTED
@given(seed=SEEDS)
def test_nothing_decides_with_two_acceptors_down_until_one_returns(fast: bool, seed: int) -> None:
    """With 2 of 3 acceptors down no quorum exists: however long the leader retries, crashes and recovers,
    and however often the shards ask, nothing decides. One acceptor back, and it decides."""
    announce(seed, fast)
    world = PaxosWorld(fast, seed, n_txns=1, max_down=2)
    txid, parts = _only_txn(world)
    down = world.rng.sample(ACCEPTORS, 2)
    for name in down:
        world.do(("down", name))
    blocked = Weights(duplicate=0.5, timer=2.0, crash=0.2, restart=1.0, ask=1.5)  # no drops: every vote is cast
    world.run_chaos(world.rng.randint(150, 400), blocked)
    for _ in range(3):  # and longer: every in-doubt shard asks, every timer fires
        if not world.up:
            world.do(("restart", ()))
        for shard, t in world.in_doubt():
            world.do(("ask", (shard, t)))
        world.drain()
        for key in sorted(world.timers):
            world.do(("timer", key))
        world.drain()

    assert not any(isinstance(e, (Replied, Decided)) for e in world.history), "decided without a quorum"
    assert set(world.outcome_at(txid).values()) == {PREPARED}
    assert world.ballots_used, "the leader never tried to recover"

    world.do(("up", world.rng.choice(down)))
    world.heal()
    world.check_settled_outcomes()
    outcomes = set(world.outcome_at(txid).values())
    assert len(outcomes) == 1 and outcomes <= {COMMITTED, ABORTED}
    assert world.replies(txid) == outcomes


# -- the simulator itself -------------------------------------------------------------------------


@VARIANT
def test_a_seed_replays_exactly(fast: bool) -> None:
    runs = two_runs(lambda: PaxosWorld(fast, 4242))
    assert runs[0] == runs[1]
    assert PaxosWorld(fast, 4243).txns != PaxosWorld(fast, 4242).txns


@VARIANT
def test_the_simulation_reaches_the_interesting_cases(fast: bool) -> None:
    """Guard against a vacuous simulator: fixed seeds must cover commits, no votes, crashes and recovery."""
    seen: Counter[str] = Counter()
    for seed in range(150):
        world = chaos_and_heal(PaxosWorld(fast, seed))
        for line in world.trace:
            for word in ("crash", "drop", "duplicate", "down a", "status(", "answer(", "1b(", "learn(", "recovering ["):
                if word in line:
                    seen[word] += 1
            if "vote(" in line and ":aborted" in line:
                seen["no vote"] += 1
        for txid in world.txns:
            seen[str(sorted({str(s) for s in world.outcome_at(txid).values()}))] += 1
        seen["incarnations"] += world.incarnation - 1
        for outcome, count in world.learned.items():
            seen[f"learned {outcome}"] += count
        for txid, parts in world.participants.items():
            for p in parts:
                if any(ballot != BALLOT_ZERO for ballot in world.checker.chosen_at((txid, p))):
                    seen["higher ballots chosen"] += 1
    assert seen["['committed']"] > 20 and seen["['aborted']"] > 20, seen
    assert seen["crash"] > 20 and seen["drop"] > 20 and seen["duplicate"] > 20 and seen["down a"] > 20, seen
    assert seen["no vote"] > 20 and seen["answer("] > 20 and seen["1b("] > 20, seen
    assert seen["incarnations"] > 20 and seen["recovering ["] > 5 and seen["higher ballots chosen"] > 20, seen
    if fast:
        assert seen["learn("] > 20 and seen["learned committed"] > 20 and seen["learned aborted"] > 5, seen
    else:
        assert seen["learn("] == 0 and not seen["learned committed"] and not seen["learned aborted"], seen


# -- the Paxos invariants, on histories known to be bad ---------------------------------------------

PARTS = {"t1": ("s0", "s1")}
I0 = ("t1", "s0")
B1, B2 = (1, 0, 1), (2, 0, 1)


def kinds(history: list) -> set[str]:
    return {v.kind for v in check_paxos(history, PARTS)}


def test_a_correct_paxos_history_has_no_violation() -> None:
    history = [
        Accepted("a1", I0, BALLOT_ZERO, PREPARED, True),
        Accepted("a2", I0, BALLOT_ZERO, PREPARED, True),
        Promised("a3", I0, B1, True),
        Promised("a2", I0, B1, True),
        Accepted("a3", I0, B1, PREPARED, True),
        Accepted("a1", I0, BALLOT_ZERO, ABORTED, False),  # refused: does not count
        Promised("a2", I0, B1, False),
        Sent2b("a3", "t1", B1, (("s0", PREPARED),), LEADER),
        Sent2b("a1", "t1", BALLOT_ZERO, (("s0", PREPARED),), "s1"),
    ]
    assert check_paxos(history, PARTS) == []


def test_an_accept_below_the_promise_is_caught() -> None:
    assert kinds([Promised("a1", I0, B2, True), Accepted("a1", I0, B1, PREPARED, True)]) == {"promise"}
    assert kinds([Accepted("a1", I0, B2, ABORTED, True), Accepted("a1", I0, BALLOT_ZERO, PREPARED, True)]) == {
        "promise"
    }


def test_a_promise_not_above_the_previous_one_is_caught() -> None:
    assert kinds([Promised("a1", I0, B2, True), Promised("a1", I0, B1, True)]) == {"promise"}
    assert kinds([Promised("a1", I0, B1, True), Promised("a1", I0, B1, True)]) == {"promise"}


def test_two_values_chosen_at_one_ballot_are_caught() -> None:
    history = [
        Accepted("a1", I0, B1, PREPARED, True),
        Accepted("a2", I0, B1, PREPARED, True),
        Accepted("a2", I0, B1, ABORTED, True),
        Accepted("a3", I0, B1, ABORTED, True),
    ]
    violations = check_paxos(history, PARTS)
    assert any(v.kind == "chosen" and "both" in v.detail for v in violations), violations


@pytest.mark.parametrize("order", ["chosen first", "higher accept first"])
def test_a_different_value_above_a_chosen_one_is_caught(order: str) -> None:
    chosen = [Accepted("a1", I0, BALLOT_ZERO, PREPARED, True), Accepted("a2", I0, BALLOT_ZERO, PREPARED, True)]
    higher = [Accepted("a3", I0, B1, ABORTED, True)]
    history = chosen + higher if order == "chosen first" else higher + chosen
    violations = check_paxos(history, PARTS)
    assert {v.kind for v in violations} == {"chosen"}, violations
    assert "prepared chosen at (0, 0, 0)" in str(violations[0]) or "aborted at (1, 0, 1)" in str(violations[0])


def test_a_2b_for_something_not_accepted_is_caught() -> None:
    assert kinds([Sent2b("a1", "t1", BALLOT_ZERO, (("s0", PREPARED),), LEADER)]) == {"acceptor"}
    history = [
        Accepted("a1", I0, BALLOT_ZERO, ABORTED, True),
        Sent2b("a1", "t1", BALLOT_ZERO, (("s0", PREPARED),), "s0"),
    ]
    assert kinds(history) == {"acceptor"}


def test_an_acceptor_state_that_does_not_match_its_history_is_caught() -> None:
    checker = PaxosChecker(PARTS)
    state = AcceptorState()
    assert state.accept(I0, BALLOT_ZERO, PREPARED)
    checker.check_acceptors({"a1": state})  # nothing recorded: an invented acceptance
    assert {v.kind for v in checker.violations} == {"acceptor"}
    checker = PaxosChecker(PARTS)
    checker.feed(Accepted("a1", I0, B1, PREPARED, True))
    state.restore(I0, B1, B1, PREPARED)
    checker.check_acceptors({"a1": state})
    assert checker.violations == []
    state.restore(I0, B1, None, None)  # a lost acceptance (a non-durable acceptor)
    checker.check_acceptors({"a1": state})
    assert {v.kind for v in checker.violations} == {"acceptor"}


def test_a_second_vote_at_ballot_zero_is_caught() -> None:
    assert kinds([Voted("s0", "t1", PREPARED), Voted("s0", "t1", PREPARED), Voted("s1", "t1", ABORTED)]) == set()
    assert kinds([Voted("s0", "t1", PREPARED), Voted("s0", "t1", ABORTED)]) == {"vote"}


def test_the_2pc_invariants_still_apply() -> None:
    history = [ShardChanged("s0", "t1", PREPARED), ShardChanged("s1", "t1", ABORTED), Decided("store", "t1", COMMITTED)]
    assert {"validity", "agreement"} <= kinds(history)
    assert kinds([Replied("t1", COMMITTED)]) == {"reply"}


# -- the whole simulator against known bugs ------------------------------------------------------------


class AcceptsBelowPromise(AcceptorState):
    """A broken acceptor: it forgets to check its promise when it accepts."""

    def accept(self, instance: Any, ballot: Ballot, value: Any) -> bool:
        state = self.instances.setdefault(instance, InstanceState())
        state.promised = max(state.promised, ballot)
        state.accepted_ballot, state.accepted_value = ballot, value
        return True


class BlindRecovery(PaxosCommitLeader):
    """A broken core: when no acceptor of its quorum accepted anything for an instance it proposes "prepared"."""

    def _on_1b(self, event: Phase1b) -> list:
        accepted = {p: (BALLOT_ZERO, PREPARED) if b is None else (b, v) for p, (b, v) in event.accepted.items()}
        return super()._on_1b(replace(event, accepted=accepted))


class QuorumOfOne(PaxosCommitLeader):
    """A broken core: it takes one acceptor's 2b as a choice."""

    @property
    def quorum(self) -> int:
        return 1


class BrokenAcceptors(PaxosWorld):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acceptors = {name: AcceptsBelowPromise() for name in ACCEPTORS}


@VARIANT
def test_the_simulator_catches_an_acceptor_that_ignores_its_promise(fast: bool) -> None:
    failure = first_failure(BrokenAcceptors, fast, range(200))
    assert "promise violation" in str(failure), failure


@VARIANT
def test_the_simulator_catches_a_recovery_that_invents_a_yes(fast: bool) -> None:
    failure = first_failure(PaxosWorld, fast, range(300), core_factory=BlindRecovery)
    assert "validity violation" in str(failure) or "atomicity violation" in str(failure), failure


@VARIANT
def test_the_simulator_catches_a_leader_that_decides_without_a_quorum(fast: bool) -> None:
    failure = first_failure(PaxosWorld, fast, range(300), core_factory=QuorumOfOne)
    assert "violation" in str(failure), failure


@VARIANT
def test_the_simulator_catches_a_participant_that_votes_again_after_an_abort(fast: bool) -> None:
    failure = first_failure(RevotesAfterDecision, fast, range(1000))
    assert "vote violation" in str(failure), failure


# -- late and repeated messages --------------------------------------------------------------------


class RevotesAfterDecision(PaxosWorld):
    """A broken participant driver: a PREPARE of a txid already decided at the shard casts a new vote at
    ballot 0 ("aborted" after an abort), as the driver did before ``ShardState`` answered ``("decided", outcome)``."""

    @staticmethod
    def _vote_value(result: Any) -> str | None:
        if isinstance(result, tuple) and result[0] == "decided":
            return PREPARED if result[1] == COMMITTED else ABORTED
        return PaxosWorld._vote_value(result)


@VARIANT
@SCRIPTED
@given(seed=SEEDS)
def test_a_late_ack_from_an_earlier_incarnation_is_ignored(fast: bool, seed: int) -> None:
    """Incarnation 1 recovers and decides, sends its decisions and crashes before the acks arrive. A shard
    that missed its decision asks incarnation 2, whose core is still recovering when the other shard's ack
    (to incarnation 1's decision) arrives: a late message, which the core must ignore (no ProtocolError),
    and incarnation 2 then finishes with the same outcome."""
    announce(seed, fast)
    world = PaxosWorld(fast, seed, n_shards=2, n_txns=1)
    txid, (first, second) = _only_txn(world)
    world.do(("start", txid))
    world.deliver_all("prepare")
    world.deliver_all("vote")
    world.drain(lambda m: m.kind in ("2b", "learn") and m.src == "a3")  # one acceptor's bundles: no quorum
    world.do(("timer", (txid, "votes")))  # incarnation 1 recovers: a recovered core sends decisions, also when fast
    world.drain(lambda m: m.kind in ("1a", "1b", "2a", "2b"))
    assert world.replies(txid) == {COMMITTED}
    world.deliver_all("decision", lambda m: m.dst == first)  # its ack stays in the bag
    assert world.shards[first].state_of(txid) == COMMITTED
    world.do(("crash", None))
    world.drain(lambda m: m.dst == LEADER and m.kind != "ack")  # lost: the leader is down
    world.do(("restart", ()))
    world.do(("ask", (second, txid)))
    world.deliver_all("status")
    assert world.cores[txid].state == "recovering"
    assert world.deliver_all("ack") == 1  # a ProtocolError here fails the run
    assert world.cores[txid].state == "recovering"
    world.drain()
    assert set(world.outcome_at(txid).values()) == {COMMITTED}
    assert world.replies(txid) == {COMMITTED}
    world.heal()
    world.check_settled_outcomes()


@VARIANT
@pytest.mark.parametrize("driver", [PaxosWorld, RevotesAfterDecision], ids=["driver", "revoting-driver"])
def test_a_participant_never_proposes_two_values_at_ballot_zero(fast: bool, driver: type[PaxosWorld]) -> None:
    """Ballot 0 belongs to the participant, which proposes only its vote there. A shard voted yes, the
    transaction aborted (another participant voted no), and then a late copy of the PREPARE arrives: it
    must cast no new vote. A driver that answers it with "aborted" at ballot 0 (to the acceptor that missed
    the first 2a) is caught at once; left alone, a recovery whose quorum answers that acceptor first
    would then propose "aborted" for an instance that chose "prepared" at ballot 0."""
    world = driver(fast, 1, n_shards=3, n_txns=1)
    txid, parts = _only_txn(world)
    yes, no, other = parts
    txn = world.txns[txid]
    key = (txn.reads[no] + txn.writes[no])[0][0]  # another transaction holds a lock the txn needs at `no`
    assert world.shards[no].apply(("prepare", "tx-other", (), ((key, b"x"),))) == "yes"
    world.do(("start", txid))
    world.do(("duplicate", next(i for i, m in enumerate(world.bag) if m.dst == yes)))  # one copy arrives late
    world.do(("deliver", next(i for i, m in enumerate(world.bag) if m.dst == yes)))
    world.deliver_all("prepare", lambda m: m.dst != yes)
    assert world.outcome_at(txid) == {yes: PREPARED, no: ABORTED, other: PREPARED}
    assert world.shards[no].apply(("abort", "tx-other")) == ABORTED  # (not part of the simulation)
    world.do(("drop", next(i for i, m in enumerate(world.bag) if m.kind == "vote" and m.src == yes and m.dst == "a3")))
    world.deliver_all("vote", lambda m: m.dst == "a1" and m.src == no)
    world.deliver_all("vote", lambda m: m.src == yes)  # "prepared" chosen at ballot 0 by a1 and a2
    world.deliver_all("vote", lambda m: m.dst == "a1" and m.src == other)  # a1's bundle, with `no` aborted
    assert world.checker.chosen_values((txid, yes)) == {PREPARED}
    world.deliver_all("2b")
    assert world.replies(txid) == {ABORTED}
    world.deliver_all("learn" if fast else "decision", lambda m: m.dst == yes)
    assert world.shards[yes].state_of(txid) == ABORTED

    if driver is RevotesAfterDecision:
        expected = f"vote violation for {txid}: {yes} proposed prepared, then aborted"
        with pytest.raises(SimulationFailure, match=expected):
            world.deliver_all("prepare")
        return
    assert world.deliver_all("prepare") == 1  # the late copy: no new vote
    assert not any(m.kind == "vote" and m.src == yes for m in world.bag)
    assert world.acceptors["a3"].record((txid, yes))[1:] == (None, None)
    _crash_and_lose_what_reaches_the_leader(world)
    world.do(("restart", ()))
    world.do(("ask", (other, txid)))  # still in doubt
    world.deliver_all("status")
    world.deliver_all("1a", lambda m: m.dst == "a3")
    world.deliver_all("1a", lambda m: m.dst == "a1")
    world.deliver_all("1b")  # a3's first: it has nothing for `yes`, a1 has "prepared" at ballot 0
    world.drain()
    assert world.checker.chosen_values((txid, yes)) == {PREPARED}
    assert world.replies(txid) == {ABORTED}
    world.heal()
    world.check_settled_outcomes()
    assert set(world.outcome_at(txid).values()) == {ABORTED}
