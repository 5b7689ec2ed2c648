"""Deterministic simulation of Three-Phase Commit (``3pc`` and ``3pc-quorum``, Skeen 1981 and 1982): safety
and non-blocking termination when processes crash (a perfect failure detector), the split of plain 3PC
under a network partition, the quorum variant that blocks there instead, and the checker itself.

Every run is fixed by its case, ``<protocol>-<model>`` (``3pc-crash``, ``3pc-quorum-crash``,
``3pc-partition``, ``3pc-quorum-partition``), and an integer seed (``tests/sim/three_phase_world.py``):
the seed makes the shards, the transactions, the fault rates and every scheduling choice. Each example
prints ``SIM_SEED=<seed> case=<case>``, and a failure's message repeats it with the last actions. To
replay one seed, in every test of this module that draws a seed::

    SIM_SEED=1234 .venv/bin/python -m pytest tests/test_sim_three_phase.py -k '[3pc-quorum-partition]' -s

(``-k '[3pc-crash]'`` selects the plain crash-model cases; name a scripted test, e.g. ``-k textbook``,
to replay it; ``-s`` shows the prints). With SIM_SEED set, each test runs that one seed, and the split
search starts at that seed.

``client_retries`` models a client that resends ``txn.commit`` to a restarted coordinator, which starts
the transaction a second time: the simulator shows that this splits it (the scripted test below), which
is why the real client never resends a 3PC commit that may have arrived. From Python::

    from tests.sim.three_phase_world import ThreePhaseWorld
    world = ThreePhaseWorld("3pc-quorum", 1234, model="partition")
    world.run_chaos(); world.heal(); print("\\n".join(world.trace))
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings

from commit.protocols.three_phase import (
    PREABORTED,
    PRECOMMITTED,
    WAITING,
    GaveUp,
    StateReport,
    Terminator,
    ThreePhaseCoordinator,
    Vote,
)
from commit.protocols.events import ProtocolError
from commit.node.state_machines.shard import ShardState
from tests.sim.base import ABORTED, COMMITTED, PREPARED, Decided, ShardChanged, ShardRefused, SimulationFailure
from tests.sim.runs import SEEDS, first_failure
from tests.sim.three_phase_world import HistoryEntry, PhaseChanged, ThreePhaseWorld, check
from tests.sim.world import Replied

CHAOS = settings(max_examples=1000, deadline=None, derandomize=False, database=None)
SCRIPTED = settings(max_examples=100, deadline=None, derandomize=False, database=None)
PROTOCOLS = ("3pc", "3pc-quorum")
SAFE_CASES = ["3pc-crash", "3pc-quorum-crash", "3pc-quorum-partition"]  # the cases that must never split
CRASH_CASES = ["3pc-crash", "3pc-quorum-crash"]
SPLIT_SEARCH = 100  # the plain protocol must split under a partition within this many seeds
BUSY_STEPS = 400  # how long a scripted run lets a blocked world retry before looking at it


def make(case: str, seed: int, **kwargs: object) -> ThreePhaseWorld:
    """The world of ``case``: ``<protocol>-<model>``, with ``-retries`` for client retries."""
    retries = case.endswith("-retries")
    protocol, model = case.removesuffix("-retries").rsplit("-", 1)
    print(f"SIM_SEED={seed} case={case}")
    return ThreePhaseWorld(protocol, seed, model=model, client_retries=retries, **kwargs)  # type: ignore[arg-type]


# -- chaos ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SAFE_CASES)
@CHAOS
@given(seed=SEEDS)
def test_invariants_hold_under_chaos(case: str, seed: int) -> None:
    """Reordering, coordinator crashes and amnesiac restarts, terminators killed, silences firing (and,
    under ``partition``, the network cut and mended): every step keeps every invariant."""
    world = make(case, seed)
    world.run_chaos()  # raises SimulationFailure at the first violation
    assert world.steps > 0
    assert not world.checker.violations


@pytest.mark.parametrize("case", CRASH_CASES)
@CHAOS
@given(seed=SEEDS)
def test_every_started_transaction_decides_without_the_coordinator(case: str, seed: int) -> None:
    """3PC is non-blocking: after the chaos the coordinator is down for good, and once nothing is left to
    deliver and no timer may fire, every transaction it started is decided at every participant, with one
    outcome, and no lock is left (a perfect failure detector, and shards that never fail)."""
    world = make(case, seed)
    world.run_chaos()
    if world.up:
        world.do(("crash", None))
    world.heal()  # raises SimulationFailure unless it settles
    world.check_settled_outcomes()
    for txid in world.started:
        assert set(world.outcome_at(txid).values()) in ({COMMITTED}, {ABORTED}), (txid, world.outcome_at(txid))
    for name, shard in world.shards.items():
        assert not shard.locks and not shard.prepared, name


@CHAOS
@given(seed=SEEDS)
def test_the_quorum_variant_settles_once_the_partition_mends(seed: int) -> None:
    """Under partitions ``3pc-quorum`` may block a minority, never split; once the network is whole again
    every started transaction ends decided, with one outcome everywhere it is known."""
    world = make("3pc-quorum-partition", seed)
    world.run_chaos()
    world.heal()
    world.check_settled_outcomes()
    assert all(not s.locks and not s.prepared for s in world.shards.values())


@CHAOS
@given(seed=SEEDS)
def test_plain_3pc_under_partitions_breaks_nothing_but_agreement(seed: int) -> None:
    """Plain 3PC under partitions may split (the participants' decisions, and so the replies and the
    cores' decisions, disagree), but a partition never makes it commit without every vote, nor break a
    participant's round or phase rules."""
    world = make("3pc-partition", seed, strict=False)
    world.run_chaos()
    world.quiesce(BUSY_STEPS)
    kinds = {v.kind for v in world.checker.violations}
    assert kinds <= {"atomicity", "agreement", "stability", "reply"}, world.checker.violations
    if world.splits():
        assert "atomicity" in kinds


def test_plain_3pc_splits_under_some_partition() -> None:
    """The simulator must find Skeen's split: a seed where, with the network cut, one participant commits
    and another aborts the same transaction, and the checker says so (the first such seed, printed)."""
    first = int(os.environ.get("SIM_SEED") or 0)  # SIM_SEED replays a split found before: it is found first
    seeds = range(first, first + SPLIT_SEARCH)
    for seed in seeds:
        world = ThreePhaseWorld("3pc", seed, model="partition", strict=False)
        world.run_chaos()
        world.quiesce(BUSY_STEPS)
        if world.splits():
            break
    else:
        pytest.fail(f"no partition split plain 3PC in seeds {seeds}")
    txid = world.splits()[0]
    print(f"SIM_SEED={seed} case=3pc-partition splits {txid}: {world.outcome_at(txid)}")
    print("\n".join(world.trace))
    assert any(v.kind == "atomicity" and v.txid == txid for v in world.checker.violations), world.checker.violations
    assert world.stats["cut"] > 0
    # the same seed, strict, stops at the first violation and names the seed to replay
    with pytest.raises(SimulationFailure, match=f"SIM_SEED={seed} "):
        strict = ThreePhaseWorld("3pc", seed, model="partition")
        strict.run_chaos()
        strict.quiesce(BUSY_STEPS)


# -- scripted: the textbook partition ------------------------------------------------------------


def _precommit_reaches_only_one(world: ThreePhaseWorld) -> tuple[str, str, list[str]]:
    """Every participant of the one transaction votes yes; the PreCommit reaches one of them, A (seeded),
    and A's ack reaches the coordinator. Returns the txid, A and the others."""
    (txid,) = world.txns
    parts = world.participants[txid]
    assert len(parts) == 3
    world.do(("start", txid))
    assert world.deliver_all("prepare") == 3
    world.deliver_all("vote")
    assert sorted(m.shard for m in world.bag if m.kind == "move") == sorted(parts)
    a = world.rng.choice(parts)
    others = [p for p in parts if p != a]
    world.deliver_all("move", lambda m: m.shard == a)
    world.deliver_all("report")
    assert world.phase_at(txid) == {p: PRECOMMITTED if p == a else WAITING for p in parts}
    return txid, a, others


def _partition_after_one_precommit(world: ThreePhaseWorld, fate: str) -> tuple[str, str, list[str]]:
    """The textbook case: PreCommit reached A only, then the network splits {coordinator, A} | {B, C}; the
    coordinator crashes there too, or lives on, cut off from B and C."""
    txid, a, others = _precommit_reaches_only_one(world)
    world.do(("cut", tuple(others)))
    if fate == "crashed":
        world.do(("crash", None))
    return txid, a, others


@pytest.mark.parametrize("fate", ["crashed", "cut"])
@SCRIPTED
@given(seed=SEEDS)
def test_textbook_partition_splits_plain_3pc(seed: int, fate: str) -> None:
    """B and C hear nothing while waiting: each aborts on its own. A is precommitted: its terminator (or
    the coordinator, whose ack timer presumes B and C crashed) commits. The checker must report it."""
    world = make("3pc-partition", seed, n_txns=1)
    txid, a, others = _partition_after_one_precommit(world, fate)
    with pytest.raises(SimulationFailure) as caught:
        world.quiesce(BUSY_STEPS)
    assert f"SIM_SEED={seed}" in str(caught.value) and "violation" in str(caught.value), caught.value
    world.strict = False  # let the split play out to the end
    world.quiesce(BUSY_STEPS)
    assert world.outcome_at(txid) == {a: COMMITTED, **{o: ABORTED for o in others}}
    assert world.splits() == [txid]
    atomicity = [v for v in world.checker.violations if v.kind == "atomicity"]
    assert any(f"{a} committed" in v.detail for v in atomicity), world.checker.violations
    assert world.stats["aborted on its own"] == 2
    # the recorded history alone, through a fresh checker, shows the split too
    assert "atomicity" in {v.kind for v in check(world.history, world.participants)}
    assert "atomicity" in {v.kind for v in check([], world.participants, world.shards)}


@pytest.mark.parametrize("fate", ["crashed", "cut"])
@SCRIPTED
@given(seed=SEEDS)
def test_textbook_partition_blocks_the_minority_under_quorum_3pc(seed: int, fate: str) -> None:
    """The same partition under ``3pc-quorum``: B and C, a majority, preabort and abort; A alone can reach
    neither quorum, so it stays precommitted, holding its locks, however often it tries. Once the network
    is mended A learns the abort."""
    world = make("3pc-quorum-partition", seed, n_txns=1)
    txid, a, others = _partition_after_one_precommit(world, fate)
    assert not world.quiesce(BUSY_STEPS)  # still busy: A keeps trying (or the coordinator keeps resending)
    assert world.phase_at(txid) == {a: PRECOMMITTED, **{o: ABORTED for o in others}}
    assert world.shards[a].locks
    assert not world.splits() and not world.checker.violations
    if fate == "crashed":
        assert world.stats["terminated while precommitted"] > 1  # A retried, and each try was blocked
        assert world.stats["gave up"] >= world.stats["terminated while precommitted"] - 1
    world.heal()
    world.check_settled_outcomes()
    assert set(world.outcome_at(txid).values()) == {ABORTED}


# -- scripted: the coordinator crashes, nothing else fails ----------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("point", ["after-votes", "after-one-precommit", "after-every-precommit"])
@SCRIPTED
@given(seed=SEEDS)
def test_the_participants_finish_without_the_coordinator(seed: int, protocol: str, point: str) -> None:
    """The coordinator dies for good at a point of the normal case (its unsent PreCommits die with it); the
    participants finish alone: abort if nobody was precommitted, commit if everybody was, one outcome
    either way if somebody was."""
    world = make(f"{protocol}-crash", seed, n_shards=3, n_txns=1, span_all=True)
    (txid,) = world.txns
    parts = world.participants[txid]
    world.do(("start", txid))
    world.deliver_all("prepare")
    world.deliver_all("vote")
    reached = {"after-votes": [], "after-one-precommit": [world.rng.choice(parts)], "after-every-precommit": parts}
    world.deliver_all("move", lambda m: m.shard in reached[point])
    while (index := next((i for i, m in enumerate(world.bag) if m.kind == "move"), None)) is not None:
        world.do(("drop", index))  # never left the process
    world.do(("crash", None))
    world.heal()
    world.check_settled_outcomes()
    outcomes = set(world.outcome_at(txid).values())
    if point == "after-votes":
        assert outcomes == {ABORTED}
        if protocol == "3pc":
            assert world.stats["aborted on its own"] == 3 and not world.stats["terminated while waiting"]
    elif point == "after-every-precommit":
        assert outcomes == {COMMITTED}
    else:
        assert outcomes in ({COMMITTED}, {ABORTED})
    assert world.replies(txid) == set()  # the coordinator died before it could reply


# -- why the client never resends a 3PC commit ------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_resending_a_commit_to_a_restarted_coordinator_would_split_it(protocol: str) -> None:
    """Why ``Transaction.commit`` sends a 3PC ``txn.commit`` at most once when it may have arrived
    (``resend_maybe_applied=False``; tests/test_three_phase.py checks it on a real cluster).

    Everyone precommitted, the coordinator died before the acks; a participant terminates: it commits.
    A resent ``txn.commit`` would reach the restarted coordinator, which knows nothing and starts the
    transaction again at round (0, 0); its votes are slow, so its vote timer aborts, and that abort reaches
    a participant before the terminator's commit does. The simulator must show the split. Deterministic:
    no seed is drawn."""
    world = ThreePhaseWorld(protocol, 1, n_shards=3, n_txns=1, span_all=True, client_retries=True, strict=False)
    (txid,) = world.txns
    first, *_, last = world.participants[txid]
    world.do(("start", txid))
    world.deliver_all("prepare")
    world.deliver_all("vote")
    world.deliver_all("move")  # every participant precommitted at round (0, 0); the acks are on their way
    world.do(("crash", None))
    world.do(("restart", None))
    world.do(("silence", (first, txid)))
    world.deliver_all("join")
    world.deliver_all("report")
    (terminator,) = world.terminators.values()
    assert terminator.core.outcome == COMMITTED  # its decisions are on their way
    assert world.pending_retries() == [txid]
    world.do(("retry", txid))
    (second,) = [key for key in world.timers if key[1] == "votes"]
    world.do(("timer", second))  # the second coordinator's PREPAREs are slow: it aborts
    world.deliver_all("decision", lambda m: m.shard == last and m.outcome == ABORTED)
    world.deliver_all("decision", lambda m: m.shard == first and m.outcome == COMMITTED)
    print("\n".join(world.trace))
    print(world.outcome_at(txid), *world.checker.violations, sep="\n")
    assert world.splits(), world.outcome_at(txid)
    assert any(v.kind == "atomicity" for v in world.checker.violations), world.checker.violations


# -- replay and coverage ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", SAFE_CASES + ["3pc-partition"])
def test_a_seed_replays_exactly(case: str) -> None:
    runs = []
    for _ in range(2):
        world = make(case, 4242, strict=False)
        world.run_chaos()
        world.quiesce(BUSY_STEPS)
        runs.append((world.trace, world.history))
    assert runs[0] == runs[1]
    assert make(case, 4243).txns != make(case, 4242).txns


@pytest.mark.parametrize("case", SAFE_CASES)
def test_the_simulation_reaches_the_interesting_cases(case: str) -> None:
    """Guard against a vacuous simulator: fixed seeds must cover commits and aborts, coordinator crashes,
    terminations from every phase the protocol has, terminators killed and superseded (and cuts)."""
    seen: Counter[str] = Counter()
    for seed in range(150):
        world = make(case, seed)
        world.run_chaos()
        world.heal()
        seen.update(world.stats)
        for txid in world.started:
            seen[str(sorted({str(s) for s in world.outcome_at(txid).values()}))] += 1
        for line in world.trace:
            for word in ("vote(", "lost: no such core", "lost: cut", "superseded", "blocked", "precommitted r=[1"):
                if word in line:
                    seen[word] += 1
    assert seen["['committed']"] > 20 and seen["['aborted']"] > 20, seen
    assert seen["coordinator crash"] > 20 and seen["terminators killed"] > 5, seen
    assert seen["terminated while precommitted"] > 10 and seen["finished terminator"] > 10, seen
    assert seen["superseded"] > 0 and seen["lost: no such core"] > 20, seen
    if case.startswith("3pc-quorum"):
        assert seen["terminated while waiting"] > 20 and seen["terminated while preaborted"] > 0, seen
    else:
        assert seen["aborted on its own"] > 20, seen
    if case.endswith("partition"):
        assert seen["cut"] > 20 and seen["lost: cut"] > 20 and seen["blocked"] > 20, seen


# -- the checker against known-bad histories --------------------------------------------------------

PARTS = {"t1": ("s0", "s1")}


def kinds(history: list[HistoryEntry], shards: dict[str, ShardState] | None = None) -> set[str]:
    return {v.kind for v in check(history, PARTS, shards)}


def prepared_both() -> list[HistoryEntry]:
    return [
        ShardChanged("s0", "t1", PREPARED),
        PhaseChanged("s0", "t1", WAITING, (0, 0)),
        ShardChanged("s1", "t1", PREPARED),
        PhaseChanged("s1", "t1", WAITING, (0, 0)),
    ]


def test_a_correct_history_has_no_violation() -> None:
    committed = prepared_both() + [
        PhaseChanged("s0", "t1", PRECOMMITTED, (0, 0)),
        PhaseChanged("s1", "t1", WAITING, (1, 2)),  # joined a terminator
        PhaseChanged("s1", "t1", PRECOMMITTED, (1, 2)),  # which moved it
        Replied("t1", "pending"),  # the coordinator stepped aside
        Decided("terminator T3@s1[1,2]", "t1", COMMITTED),
        ShardChanged("s1", "t1", COMMITTED),
        ShardChanged("s0", "t1", COMMITTED),
    ]
    assert check(committed, PARTS) == []
    aborted = [
        ShardChanged("s0", "t1", PREPARED),
        ShardChanged("s1", "t1", ABORTED),  # voted NO
        Decided("the coordinator C1.1", "t1", ABORTED),
        Replied("t1", ABORTED),
        ShardChanged("s0", "t1", ABORTED),
    ]
    assert check(aborted, PARTS) == []


def test_a_split_history_is_flagged() -> None:
    split = prepared_both() + [
        PhaseChanged("s0", "t1", PRECOMMITTED, (0, 0)),
        ShardChanged("s1", "t1", ABORTED),  # waiting, it timed out and aborted on its own
        Decided("terminator T2@s0[1,1]", "t1", COMMITTED),  # which presumed s1 crashed
        ShardChanged("s0", "t1", COMMITTED),
    ]
    violations = check(split, PARTS)
    assert {"atomicity", "agreement"} <= {v.kind for v in violations}, violations
    assert any("s1 aborted" in v.detail and "s0 committed" in v.detail for v in violations), violations


def test_a_split_in_the_shard_states_is_flagged() -> None:
    s0, s1 = ShardState(), ShardState()
    assert s0.apply(("prepare", "t1", (), ((b"k", b"v"),), ("s0", "s1"))) == "yes"
    assert s0.apply(("commit", "t1")) == COMMITTED
    assert s1.apply(("3pc_join", "t1", (1, 1))) == (ABORTED, (0, 0))  # never prepared: fenced
    assert kinds([], {"s0": s0, "s1": s1}) == {"atomicity"}


@pytest.mark.parametrize(
    "second",
    [
        Decided("terminator T4@s1[1,2]", "t1", ABORTED),
        Replied("t1", ABORTED),
    ],
    ids=["terminator", "reply"],
)
def test_cores_that_contradict_each_other_are_flagged(second: HistoryEntry) -> None:
    history = prepared_both() + [Decided("the coordinator C1.1", "t1", COMMITTED), second]
    assert "stability" in kinds(history)


def test_a_reply_that_is_not_the_outcome_is_flagged_but_pending_is_not() -> None:
    history = [ShardChanged("s0", "t1", ABORTED), Replied("t1", "pending")]
    assert kinds(history) == set()
    assert kinds(history + [Replied("t1", COMMITTED)]) >= {"reply"}


def test_a_commit_or_precommit_without_every_vote_is_flagged() -> None:
    only_s0 = [ShardChanged("s0", "t1", PREPARED), PhaseChanged("s0", "t1", WAITING, (0, 0))]
    assert kinds(only_s0 + [PhaseChanged("s0", "t1", PRECOMMITTED, (0, 0))]) == {"validity"}
    assert kinds(only_s0 + [Decided("terminator T2@s0[1,1]", "t1", COMMITTED)]) == {"validity"}
    assert kinds([PhaseChanged("s1", "t1", WAITING, (0, 0))]) == {"validity"}  # a phase, never prepared


def test_a_participant_breaking_its_round_or_phase_rules_is_flagged() -> None:
    flip = prepared_both() + [
        PhaseChanged("s0", "t1", PRECOMMITTED, (0, 0)),
        PhaseChanged("s0", "t1", PREABORTED, (1, 2)),
    ]
    assert kinds(flip) == {"phase"}
    back = prepared_both() + [PhaseChanged("s1", "t1", PREABORTED, (1, 1)), PhaseChanged("s1", "t1", WAITING, (1, 1))]
    assert kinds(back) == {"phase"}
    lower = prepared_both() + [PhaseChanged("s1", "t1", WAITING, (2, 1)), PhaseChanged("s1", "t1", WAITING, (1, 2))]
    assert kinds(lower) == {"round"}


def test_a_refused_decision_is_flagged() -> None:
    assert kinds([ShardRefused("s1", "t1", "commit", "commit of t1, which is aborted here")]) == {"atomicity"}


# -- the whole simulator against known-bad protocols ----------------------------------------------


def impatient(phase: str, promised: tuple[int, int], quorum: bool) -> str:
    """A broken silence rule: every participant that hears nothing aborts on its own, precommitted too."""
    return "abort"


def plain_terminator(txid: str, participants: tuple[str, ...], round_: tuple[int, int], quorum: bool,
                     timeout_s: float) -> Terminator:
    """A broken quorum variant: its terminators follow the plain rules (any precommitted -> commit)."""
    return Terminator(txid, participants, round_, False, timeout_s)


class LazyTerminator(Terminator):
    """A broken terminator: it gives up at once."""

    def handle(self, event: object) -> list[object]:
        self.state = "done"
        return [GaveUp(reason="lazy")]


class CommitsAtFirstAck(ThreePhaseCoordinator):
    """A broken plain coordinator: it commits as soon as one participant acknowledged its PreCommit."""

    def handle(self, event: object) -> list[object]:
        if isinstance(event, StateReport) and event.state == PRECOMMITTED and self.state == "precommitting":
            self.precommitted = set(self.participants) - {event.participant}
        return super().handle(event)


class CommitsDespiteNo(ThreePhaseCoordinator):
    """A broken coordinator: it counts a NO vote as a YES."""

    def handle(self, event: object) -> list[object]:
        if isinstance(event, Vote) and not event.yes:
            event = Vote(now=event.now, participant=event.participant, yes=True)
        return super().handle(event)


class RejectsLateVotes(ThreePhaseCoordinator):
    """A coordinator with a hole in its transition table: a vote that arrives after the decision."""

    def handle(self, event: object) -> list[object]:
        if isinstance(event, Vote) and self.state in ("decided", "done"):
            raise ProtocolError(f"{self.txid}: no transition from {self.state!r} on {event!r}")
        return super().handle(event)


def test_the_simulator_catches_a_coordinator_that_commits_before_every_precommit_ack() -> None:
    failure = first_failure(ThreePhaseWorld, "3pc", range(1000), coordinator_factory=CommitsAtFirstAck)
    assert "atomicity violation" in str(failure) or "agreement violation" in str(failure), failure


def test_a_broken_silence_rule_cannot_split_but_is_caught() -> None:
    """The shard refuses ``3pc_timeout_abort`` once precommitted or joined, so a silence rule that always
    aborts cannot split a transaction; it leaves precommitted participants stuck, and the run fails."""
    failure = first_failure(ThreePhaseWorld, "3pc", range(300), on_silence=impatient)
    assert "liveness" in str(failure) and "precommitted" in str(failure), failure


def test_the_simulator_catches_a_quorum_variant_that_presumes_the_silent_crashed() -> None:
    failure = first_failure(ThreePhaseWorld, "3pc-quorum", range(300), model="partition",
                            terminator_factory=plain_terminator)
    assert any(f"{kind} violation" in str(failure) for kind in ("atomicity", "agreement", "stability")), failure


def test_the_simulator_catches_a_coordinator_that_commits_despite_a_no() -> None:
    failure = first_failure(ThreePhaseWorld, "3pc", range(300), coordinator_factory=CommitsDespiteNo)
    assert "validity violation" in str(failure), failure


def test_a_protocol_error_from_a_core_fails_the_run() -> None:
    failure = first_failure(ThreePhaseWorld, "3pc", range(300), coordinator_factory=RejectsLateVotes)
    assert "ProtocolError from the coordinator" in str(failure), failure
    assert isinstance(failure.__cause__, ProtocolError)


def test_the_simulator_catches_termination_that_never_finishes() -> None:
    failure = first_failure(ThreePhaseWorld, "3pc-quorum", range(300), terminator_factory=LazyTerminator)
    assert "liveness" in str(failure), failure


def test_the_failure_detector_is_perfect_in_the_crash_model() -> None:
    """Timers that presume a crash wait for one: a live coordinator's ack timer never fires while a
    PreCommit or its ack is on its way, a participant suspects only a core that stopped, and a
    terminator's join timer never fires while every participant can still answer."""
    world = ThreePhaseWorld("3pc", 11, n_shards=3, n_txns=1, span_all=True)
    (txid,) = world.txns
    world.do(("start", txid))
    world.deliver_all("prepare")
    world.deliver_all("vote")
    (coordinator,) = world.live.values()
    assert not world.timer_allowed((coordinator.id, "acks"))
    assert world.deliver_all("move", lambda m: m.shard == "s0") == 1
    assert not world.waits_in_vain("s0", txid)  # its coordinator runs
    world.do(("crash", None))
    assert [shard for shard, _ in world.pending_silences()] == ["s0", "s1", "s2"]
    world.do(("silence", ("s0", txid)))
    (terminator,) = world.live.values()
    assert terminator.node == "s0" and terminator.round == (1, 1)
    assert world.deliver_all("join", lambda m: m.shard != "s2") == 2
    assert not world.timer_allowed((terminator.id, "join"))  # s2's join is on its way
    assert not world.waits_in_vain("s1", txid)  # s1 joined a running terminator
    assert world.pending_silences() == [("s2", txid)]  # s2 still waits on the crashed coordinator
    world.do(("kill", "s0"))
    assert world.pending_silences() == [("s0", txid), ("s1", txid), ("s2", txid)]
    cut = ThreePhaseWorld("3pc", 11, n_shards=3, n_txns=1, span_all=True, model="partition")
    (txid,) = cut.txns
    cut.do(("start", txid))
    cut.deliver_all("prepare")
    cut.deliver_all("vote")
    (coordinator,) = cut.live.values()
    cut.do(("cut", ("s2",)))
    assert cut.timer_allowed((coordinator.id, "acks"))  # s2 is across the cut: presumed crashed
    assert cut.waits_in_vain("s2", txid) and not cut.waits_in_vain("s1", txid)
