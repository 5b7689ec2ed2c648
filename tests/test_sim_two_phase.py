"""Deterministic simulation of Two-Phase Commit (``2pc`` and ``raft-2pc``): safety under chaos, liveness
after healing, and the blocking that separates the two protocols.

Every run is fixed by its protocol and an integer seed (``tests/sim/world.py``): the seed makes the
shards, the transactions, the fault rates and every scheduling choice. Each example prints
``SIM_SEED=<seed> protocol=<protocol>``, and a failure's message repeats it with the last actions.
To replay one seed, in every test of this module that draws a seed::

    SIM_SEED=1234 .venv/bin/python -m pytest tests/test_sim_two_phase.py -k '[raft-2pc]' -s

(``-k '[2pc]'`` selects the ``2pc`` cases of the chaos tests; name a scripted test, e.g. ``-k
blocks``, to replay it; ``-s`` shows the prints). With SIM_SEED set, each test runs that one seed.
From Python::

    from tests.sim.world import World
    world = World("2pc", 1234); world.run_chaos(); world.heal(); print("\\n".join(world.trace))
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings

from commit.protocols.two_phase import PersistDecision
from tests.sim.base import ABORTED, COMMITTED, PREPARED
from tests.sim.runs import SEEDS, chaos_and_heal, two_runs
from tests.sim.world import PENDING, PROTOCOLS, World

CHAOS = settings(max_examples=300, deadline=None, derandomize=False, database=None)
SCRIPTED = settings(max_examples=100, deadline=None, derandomize=False, database=None)


def announce(seed: int, protocol: str) -> None:
    print(f"SIM_SEED={seed} protocol={protocol}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@CHAOS
@given(seed=SEEDS)
def test_invariants_hold_under_chaos(protocol: str, seed: int) -> None:
    """Reordering, drops, duplicates, crashes and restarts: every step keeps every invariant."""
    announce(seed, protocol)
    world = World(protocol, seed)
    world.run_chaos()  # raises SimulationFailure at the first violation
    assert world.steps > 0
    assert not world.checker.violations


@pytest.mark.parametrize("protocol", PROTOCOLS)
@CHAOS
@given(seed=SEEDS)
def test_every_transaction_settles_after_healing(protocol: str, seed: int) -> None:
    """After the chaos, with no more faults, every transaction ends decided and no lock is left."""
    announce(seed, protocol)
    world = chaos_and_heal(World(protocol, seed))
    assert world.settled()
    world.check_settled_outcomes()
    for name, shard in world.shards.items():
        assert not shard.locks and not shard.prepared, name


def _prepare_and_vote_yes(world: World) -> str:
    """Start the one transaction and get every participant's YES to the coordinator."""
    (txid,) = world.txns
    world.do(("start", txid))
    if world.protocol == "raft-2pc":
        world.do(("persist", 0))  # the begin record
    assert world.deliver_all("prepare") == len(world.participants[txid])
    world.deliver_all("vote")
    assert [(t, e) for t, e in world.persists] == [(txid, PersistDecision(outcome=COMMITTED))]
    assert set(world.outcome_at(txid).values()) == {PREPARED}
    return txid


def _ask_while_down(world: World, txid: str, queries: int) -> list[str]:
    """In-doubt participants ask ``queries`` times, in a seeded order; returns the answers they got."""
    parts = world.participants[txid]
    for _ in range(queries):
        world.do(("ask", (world.rng.choice(parts), txid)))
        world.deliver_all("status")
    answers = [m.outcome for m in world.bag if m.kind == "answer"]
    world.deliver_all("answer")
    return answers


@SCRIPTED
@given(seed=SEEDS)
def test_2pc_blocks_while_its_coordinator_is_down_then_presumes_abort(seed: int) -> None:
    """The 2PC blocking window: all voted YES, the coordinator died before its decision was durable.

    However often the participants ask, nobody answers: they stay prepared, holding their locks. The
    restarted coordinator has no record of the transaction, so it answers "aborted" (presumed abort).
    """
    announce(seed, "2pc")
    world = World("2pc", seed, n_shards=3, n_txns=1)
    txid = _prepare_and_vote_yes(world)
    world.do(("crash", None))
    assert world.persists == []  # the decision record was lost with the process

    assert _ask_while_down(world, txid, world.rng.randint(0, 25)) == []
    assert set(world.outcome_at(txid).values()) == {PREPARED}
    for shard in world.participants[txid]:
        assert world.shards[shard].locks, f"{shard} released its locks while in doubt"
    assert txid not in world.log
    assert not any(m.kind in ("decision", "answer") for m in world.bag)

    world.heal()  # restart first, then the in-doubt participants ask again
    world.check_settled_outcomes()
    assert set(world.outcome_at(txid).values()) == {ABORTED}
    assert txid in world.presumed_aborted
    assert txid not in world.log  # presumed abort: nothing written for the aborted transaction
    assert all(not s.locks and not s.prepared for s in world.shards.values())


@pytest.mark.parametrize("decision_durable", [False, True], ids=["undecided", "decided"])
@SCRIPTED
@given(seed=SEEDS)
def test_raft_2pc_new_leader_finishes_from_the_group_records(seed: int, decision_durable: bool) -> None:
    """The same crash under raft-2pc: the group holds the begin record (and maybe the decision).

    While no leader runs, a question gets "pending" (or the durable decision) from the group. The new
    leader recovers every in-flight record and the transaction ends with one outcome everywhere: the
    durable one if the decision was written before the crash.
    """
    announce(seed, "raft-2pc")
    world = World("raft-2pc", seed, n_shards=3, n_txns=1)
    txid = _prepare_and_vote_yes(world)
    if decision_durable:
        world.do(("persist", 0))
        assert world.store_outcome(txid) == COMMITTED
        for index in reversed(range(len(world.bag))):  # every decision message is lost
            world.do(("drop", index))
    world.do(("crash", None))

    answers = _ask_while_down(world, txid, world.rng.randint(0, 25))
    assert set(answers) <= {COMMITTED if decision_durable else PENDING}
    if not decision_durable:
        assert set(world.outcome_at(txid).values()) == {PREPARED}
        assert [t for t, _ in world.group.in_flight()] == [txid]

    world.heal()
    world.check_settled_outcomes()
    outcomes = set(world.outcome_at(txid).values())
    assert len(outcomes) == 1 and outcomes <= {COMMITTED, ABORTED}
    assert outcomes == {world.store_outcome(txid)}
    if decision_durable:
        assert outcomes == {COMMITTED}
    assert world.group.in_flight() == []
    assert all(not s.locks and not s.prepared for s in world.shards.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_seed_replays_exactly(protocol: str) -> None:
    runs = two_runs(lambda: World(protocol, 4242))
    assert runs[0] == runs[1]
    assert World(protocol, 4243).txns != World(protocol, 4242).txns


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_simulation_reaches_the_interesting_cases(protocol: str) -> None:
    """Guard against a vacuous simulator: fixed seeds must cover commits, NO votes, crashes and recovery."""
    seen: Counter[str] = Counter()
    for seed in range(150):
        world = chaos_and_heal(World(protocol, seed))
        for line in world.trace:
            for word in ("crash", "drop", "duplicate", "vote(", "answer(", "query("):
                if word in line:
                    seen[word] += 1
            if "no)" in line:
                seen["no vote"] += 1
        for txid in world.txns:
            seen[str(sorted({str(s) for s in world.outcome_at(txid).values()}))] += 1
        seen["presumed"] += len(world.presumed_aborted)
    assert seen["['committed']"] > 20 and seen["['aborted']"] > 20, seen
    assert seen["crash"] > 20 and seen["drop"] > 20 and seen["duplicate"] > 20, seen
    assert seen["no vote"] > 20 and seen["answer("] > 20, seen
    if protocol == "raft-2pc":
        assert seen["query("] > 5, seen  # a new leader asked for votes it had lost
    else:
        assert seen["presumed"] > 5, seen  # a restarted coordinator presumed abort
