"""Forgetting finished transactions (docs/PROTOCOLS.md, "Forgetting"): tables shrink once every participant
acknowledged, nothing unacknowledged is forgotten, and a forgotten txid is answered "forgotten" (or rightly),
never presumed aborted, never prepared again; the compacted logs reload, and keep the torn-tail rule."""

from __future__ import annotations

import pickle
import time
import types
from pathlib import Path
from typing import Any

import pytest
import trio

from commit.errors import CommitUnknown
from commit.node.decision_log import DecisionLog
from commit.node.decision_stores import LocalLogStore
from commit.node.hooks import FaultHooks
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.shard import ShardState
from commit.node.tracing import Tracer
from commit.node.transaction_manager import TransactionManager
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PREPARED
from commit.protocols.registry import spec
from commit.txids import created_ms, new_txid
from consensus.acceptor import Acceptor
from consensus.horizon import Forgotten, HorizonTable
from consensus.paxos import BALLOT_ZERO
from consensus.settings import Compaction, Durability

PARTS = ("shard-0", "shard-1")
EVERY_TIME = Compaction(dead_share=0.01, min_dead_records=1)  # compact at every chance


def made_at(ms: int, protocol: str = "2pc") -> str:
    """A txid of ``protocol`` bound to PARTS whose creation time is ``ms``."""
    txid = new_txid(protocol, PARTS)
    head, _, rest = txid.partition(":")
    return f"{head}:{ms:012x}{rest[12:]}"


OLD, NEW = made_at(1_000), made_at(5_000)
HORIZON = 2_000  # OLD is below it, NEW above


# -- the table -----------------------------------------------------------------------------------------


def test_a_horizon_table_forgets_in_stamp_order_spares_what_it_must_and_survives_a_snapshot():
    table: HorizonTable[str, str] = HorizonTable(cap=10)
    for key, stamp in (("c", 3), ("a", 1), ("b", 2)):
        table.remember(key, stamp, key.upper())
    assert table.forget_before(3, keep=lambda key: key == "a") == 1
    assert list(table) == ["c", "a"] and table.horizon == 3
    assert table.forgotten(2) and not table.forgotten(3)
    assert table.forget_before(1, keep=lambda key: key == "a") == 0 and table.horizon == 3  # it never falls
    assert table.forget_before(4) == 2
    copy = pickle.loads(pickle.dumps(table))
    assert copy.horizon == 4 and len(copy) == 0


def test_a_full_horizon_table_raises_its_horizon_instead_of_cutting_blindly():
    table: HorizonTable[str, int] = HorizonTable(cap=2)
    for stamp in (5, 1, 3):
        table.remember(f"k{stamp}", stamp, stamp)
    assert sorted(table) == ["k3", "k5"] and table.forgotten(1) and not table.forgotten(2)


# -- a shard ---------------------------------------------------------------------------------------------


def committed_shard(txid: str) -> ShardState:
    shard = ShardState()
    assert shard.apply(("prepare", txid, (), ((b"k", b"v"),), PARTS)) == "yes"
    assert shard.apply(("commit", txid)) == COMMITTED
    return shard


def test_a_shard_forgets_decided_transactions_below_the_horizon_only():
    shard = committed_shard(OLD)
    shard.apply(("refuse", NEW))
    assert shard.apply(("forget", HORIZON)) == 1
    assert list(shard.decided) == [NEW] and shard.state_of(OLD) == FORGOTTEN


def test_a_prepared_transaction_is_never_forgotten_however_old():
    shard = ShardState()
    shard.apply(("prepare", OLD, (), ((b"k", b"v"),), PARTS))
    shard.apply(("forget", HORIZON))
    assert shard.state_of(OLD) == PREPARED
    assert shard.apply(("commit", OLD)) == COMMITTED  # its decision still applies
    assert shard.read(b"k").value == b"v"


def test_a_late_prepare_for_a_forgotten_txid_is_refused_and_locks_nothing():
    shard = committed_shard(OLD)
    shard.apply(("forget", HORIZON))
    vote = shard.apply(("prepare", OLD, (), ((b"k", b"other"),), PARTS))
    assert vote[0] == FORGOTTEN and "too old" in vote[1]
    assert shard.locks == {} and shard.prepared == {} and shard.read(b"k").value == b"v"


def test_no_command_about_a_forgotten_txid_fences_it_or_changes_anything():
    shard = committed_shard(OLD)
    shard.apply(("forget", HORIZON))
    for command in (("refuse", OLD), ("abort", OLD), ("commit", OLD), ("3pc_timeout_abort", OLD)):
        answer = shard.apply(command)
        assert FORGOTTEN in (answer if isinstance(answer, tuple) else (answer,)), command
    assert len(shard.decided) == 0 and shard.outcomes == {COMMITTED: 1, ABORTED: 0}
    assert shard.apply(("refuse", made_at(1_500))) == FORGOTTEN  # never seen, but below: it may have been
    assert shard.apply(("refuse", NEW)) == ABORTED  # above the horizon, unknown still means never prepared


def test_a_one_phase_commit_below_the_horizon_is_unknown_not_a_conflict():
    shard = ShardState()
    txid = f"1pc:shard-0:{1_000:012x}{'0' * 20}"
    shard.apply(("commit_one", txid, (), ((b"k", b"v"),)))
    shard.apply(("forget", HORIZON))
    with pytest.raises(CommitUnknown, match="forgotten"):
        shard.apply(("commit_one", txid, (), ((b"k", b"v"),)))


# -- the coordinator group -------------------------------------------------------------------------


def test_the_coordinator_group_forgets_finished_records_and_never_fences_or_begins_a_forgotten_txid():
    coord = CoordinatorState()
    coord.apply(("begin", OLD, PARTS))
    coord.apply(("decide", OLD, COMMITTED))
    in_flight = made_at(1_200, "raft-2pc")
    coord.apply(("begin", in_flight, PARTS))
    coord.apply(("decide", in_flight, ABORTED))
    coord.apply(("forget", HORIZON))
    assert coord.outcome_of(OLD) == COMMITTED and coord.outcome_of(in_flight) == ABORTED  # not finished: kept
    coord.apply(("finish", OLD))
    coord.apply(("forget", HORIZON))
    assert OLD not in coord.decided and in_flight in coord.decided
    assert coord.apply(("fence", OLD)) == FORGOTTEN
    assert coord.apply(("begin", OLD, PARTS)) == FORGOTTEN
    assert coord.apply(("decide", OLD, ABORTED)) == FORGOTTEN
    assert OLD not in coord.txns and OLD not in coord.decided


# -- the 2pc decision log --------------------------------------------------------------------------


def test_the_decision_log_forgets_only_acknowledged_decisions_and_compacts_to_what_is_left(tmp_path: Path):
    path = tmp_path / "2pc.log"
    log = DecisionLog(path, EVERY_TIME)
    unacked, acked = made_at(1_100), made_at(1_200)
    log.decide(unacked, COMMITTED, PARTS)
    log.decide(acked, COMMITTED, PARTS)
    log.finish(acked)
    log.decide(NEW, ABORTED, PARTS)
    log.finish(NEW)
    size = path.stat().st_size
    assert log.forget(HORIZON) == 1 and log.compactions == 1
    assert set(log.decisions) == {unacked, NEW} and path.stat().st_size < size
    assert log.forgotten(acked) and not log.forgotten(unacked) and not log.forgotten(made_at(3_000))
    assert log.decide(acked, ABORTED, PARTS) == FORGOTTEN and acked not in log.decisions  # nothing written
    log.close()
    again = DecisionLog(path)
    assert again.horizon == HORIZON and again.forgotten(acked)
    assert {t: (d.outcome, d.finished) for t, d in again.decisions.items()} == {
        unacked: (COMMITTED, False), NEW: (ABORTED, True)}
    assert [t for t, _ in again.unfinished()] == [unacked]  # still re-sent at restart
    again.close()


def test_a_torn_write_after_a_compaction_is_cut_and_the_compacted_records_load(tmp_path: Path):
    path = tmp_path / "2pc.log"
    log = DecisionLog(path, EVERY_TIME)
    log.decide(OLD, COMMITTED, PARTS)
    log.finish(OLD)
    log.decide(NEW, COMMITTED, PARTS)
    log.forget(HORIZON)
    log.close()
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a record's header, and then the crash
    again = DecisionLog(path)
    assert set(again.decisions) == {NEW} and again.forgotten(OLD)
    again.decide(made_at(6_000), ABORTED, PARTS)  # appends land after the cut
    again.close()
    assert len(DecisionLog(path).decisions) == 2


# -- the 2pc coordinator's answers -----------------------------------------------------------------


class Participants:
    """Peers as a coordinator sees them: each participant's state for any txid."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states

    async def participant_states(self, txid: str, participants: tuple[str, ...], timeout_s: float) -> dict[str, str]:
        return dict(self.states)


async def answers(tmp_path: Path, states: dict[str, str], question: Any) -> Any:
    tmp_path.mkdir(exist_ok=True)
    log = DecisionLog(tmp_path / "2pc.log")
    log.decide(OLD, COMMITTED, PARTS)
    log.finish(OLD)
    log.forget(HORIZON)
    async with trio.open_nursery() as nursery:
        manager = TransactionManager(
            spec("2pc"), LocalLogStore(log), Participants(states), node_id="n1",  # type: ignore[arg-type]
            vote_timeout_s=1, resend_s=1, persist_timeout_s=1, hooks=FaultHooks(False), tracer=Tracer("n1", 10),
            nursery=nursery, max_remembered=10)
        answer = await question(manager)
        assert manager.active == {}  # nothing was run again
    assert OLD not in log.decisions  # nor decided again
    return answer


@pytest.mark.parametrize("states, outcome", [
    ({"shard-0": FORGOTTEN, "shard-1": FORGOTTEN}, FORGOTTEN),  # never presumed aborted
    ({"shard-0": FORGOTTEN, "shard-1": COMMITTED}, COMMITTED),  # a participant that still knows is the answer
    ({"shard-0": FORGOTTEN}, FORGOTTEN),  # one silent: still no guess
])
async def test_a_forgotten_2pc_transaction_is_answered_rightly_or_forgotten(tmp_path, states, outcome):
    assert await answers(tmp_path, states, lambda m: m.status(OLD, PARTS)) == outcome
    assert await answers(tmp_path / "x", states, lambda m: m.status(OLD)) == FORGOTTEN


async def test_a_commit_resent_after_its_transaction_was_forgotten_is_not_run_again(tmp_path):
    outcome, reason = await answers(tmp_path, {}, lambda m: m.commit(OLD, {p: {"reads": [], "writes": []}
                                                                          for p in PARTS}))
    assert outcome == FORGOTTEN and "older than anything" in reason


# -- an acceptor -----------------------------------------------------------------------------------


def stamp(instance: Any) -> int:
    return created_ms(instance[0])


def acceptor(path: Path) -> Acceptor:
    return Acceptor("a0", path, Durability.OS, stamp=stamp, compaction=EVERY_TIME)


async def test_an_acceptor_forgets_only_finished_instances_and_refuses_to_recover_them(tmp_path):
    path = tmp_path / "acceptor.log"
    acc = acceptor(path)
    finished, unfinished = (OLD, "shard-0"), (made_at(1_500, "paxos-commit"), "shard-0")
    for instance in (finished, unfinished, (NEW, "shard-0")):
        assert acc.accept_now(instance, BALLOT_ZERO, PREPARED)
        await acc.persist([instance])
    await acc.finish([finished])
    assert await acc.forget(HORIZON) == 1
    assert set(acc.state.instances) == {unfinished, (NEW, "shard-0")}  # the unfinished one is kept, however old
    assert not acc.accept_now(finished, BALLOT_ZERO, ABORTED)  # a late ballot-0 2a: not a new instance
    with pytest.raises(Forgotten):
        await acc.promise((1, 0, 1), [finished, (OLD, "shard-1")])
    assert finished not in acc.state.instances
    acc.log.close()
    again = acceptor(path)  # the compacted log, reloaded
    assert again.horizon == HORIZON and again.forgotten(finished)
    assert set(again.state.instances) == {unfinished, (NEW, "shard-0")}
    assert again.state.get(unfinished).accepted_value == PREPARED


async def test_a_finished_mark_survives_a_restart_so_the_instance_is_still_forgotten(tmp_path):
    path = tmp_path / "acceptor.log"
    acc = Acceptor("a0", path, Durability.OS, stamp=stamp)  # the default compaction: not due here
    acc.accept_now((OLD, "shard-0"), BALLOT_ZERO, PREPARED)
    await acc.persist([(OLD, "shard-0")])
    await acc.finish([(OLD, "shard-0")])
    acc.log.close()
    with open(path, "ab") as f:
        f.write(b"\x00\x00")  # a torn last write
    again = Acceptor("a0", path, Durability.OS, stamp=stamp)
    assert again.finished == {(OLD, "shard-0")}
    assert await again.forget(HORIZON) == 1 and again.forgotten((OLD, "shard-0"))



async def test_a_faster_paxos_commit_transaction_is_finished_once_every_participant_said_it_learned(tmp_path):
    from commit.node.paxos_roles import PaxosNode

    acc = acceptor(tmp_path / "acceptor.log")
    txid = made_at(1_000, "fast-paxos-commit")
    for shard in PARTS:
        acc.accept_now((txid, shard), BALLOT_ZERO, PREPARED)
    node = PaxosNode("n1", acc, ("n1",), None, Tracer("n1", 10), {}, 1.0, None, 10)  # type: ignore[arg-type]
    await node.on_learned([(txid, "shard-0", PARTS)])
    assert await acc.forget(HORIZON) == 0  # shard-1 may still need a recovery
    await node.on_learned([(txid, "shard-1", PARTS)])
    assert await acc.forget(HORIZON) == 2 and len(node.learning) == 0


# -- on a real cluster -----------------------------------------------------------------------------


@pytest.fixture
def forgetful_cluster(tmp_path: Path):
    """A cluster that forgets a finished transaction one second after its txid was made."""
    from tests.conftest import _started

    limits = {"forget_after_s": 1.0, "forget_interval_s": 0.2, "compact_min_dead_records": 1}
    yield from _started(tmp_path, options={"limits": limits})


def test_a_real_cluster_forgets_acknowledged_transactions_and_answers_forgotten_never_aborted(forgetful_cluster):
    import commit
    import commit.txids as commit_txids
    from commit.config import shard_group
    from commit.routing import keys_on_each_shard

    cluster = forgetful_cluster

    async def main() -> None:
        async with commit.connect(cluster.config) as db:
            a, b = (shard[0] for shard in keys_on_each_shard("forget-", 1, cluster.config.shard_count)[:2])
            a_shard, b_shard = shard_group(0), shard_group(1)  # keys_on_each_shard lists the shards in order
            committed = {}
            for protocol in ("2pc", "raft-2pc", "paxos-commit"):
                tx = commit.Transaction(db, protocol)
                tx.put(a, protocol)
                tx.put(b, protocol)
                await tx.commit()
                committed[protocol] = (tx.txid, tuple(tx.participants))
            await trio.sleep(2.0)  # the retention, and a few forgetting rounds
            for protocol, (txid, participants) in committed.items():
                assert await db.status(txid, participants) == FORGOTTEN, protocol
            rows = await cluster.status()
            assert all(r.get("decided", 0) == 0 for r in rows if r.get("reachable")), rows
            twopc = cluster.config.twopc_coordinator
            assert (cluster.config.node_dir(twopc) / "2pc.log").stat().st_size < 200  # compacted: the horizon only
            assert (await db.get(a)).value == "paxos-commit"  # nothing was undone

            # A txid stamped beyond what a node could ever forget it by is refused at the edge: it would
            # push a full table's horizon into the future, and honest txids would read as forgotten.
            real = time.time
            commit_txids.time = types.SimpleNamespace(time=lambda: real() + 3600)  # type: ignore[assignment]
            try:
                ahead = commit_txids.new_txid("paxos-commit", [a_shard, b_shard])
            finally:
                commit_txids.time = time  # type: ignore[assignment]
            with pytest.raises(commit.InvalidRequest, match="ahead of this node's clock"):
                await db.status(ahead, (a_shard, b_shard))

    trio.run(main)
