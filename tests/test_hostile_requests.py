"""Well-formed but hostile requests, against real node processes: none may end a node, break atomicity,
lock a key for ever or grow a node's memory without bound.

Each test sends what a confused or malicious peer could (``tests/raw_messages.send_raw``), checks that
the node refuses it with a clear error, and then that the cluster is unharmed: every node up, a canary
key unchanged, and bank transfers still atomic (``tests/bank.py``). One cluster serves the module; the
test of the 2pc fence restarts its 2pc coordinator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import commit
from commit.config import COORDINATOR_GROUP, load_config, shard_group
from commit.node.executors import NodeExecutors
from commit.node.handlers import node_routes
from commit.protocols.events import Acked
from commit.protocols.registry import TXID_METHODS
from commit.routing import keys_on_each_shard
from commit.tooling.localcluster import LocalCluster
from commit.transaction import Transaction
from commit.txids import new_txid
from commit.values import pack_value
from consensus.errors import ClusterError, NotPrepared
from tests.bank import run_bank
from tests.conftest import _started
from tests.raw_messages import send_raw

pytestmark = pytest.mark.cluster

CANARY, CANARY_VALUE = "hostile-canary", {"untouched": True}
ACCOUNTS = [keys[0] for keys in keys_on_each_shard("hostile-account-", 1, 3)]
START_BALANCE = 100
SHARDS = [shard_group(0), shard_group(1)]
WINDOW = 8  # limits.max_results_per_session of this module's cluster
VOTE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    options = {"transactions": {"fault_hooks": True, "in_doubt_timeout_s": 0.5, "vote_timeout_s": VOTE_TIMEOUT_S},
               "limits": {"max_results_per_session": WINDOW}}
    for started in _started(tmp_path_factory.mktemp("hostile"), options=options):

        async def put_canary() -> None:
            async with commit.connect(started.config) as db:
                await db.put(CANARY, CANARY_VALUE)

        trio.run(put_canary)
        yield started


def keys_for(prefix: str) -> list[str]:
    """One key on shard-0 and one on shard-1."""
    return [keys[0] for keys in keys_on_each_shard(prefix, 1, 3)[:2]]


def payload(keys: list[str], value: Any) -> dict[str, dict[str, Any]]:
    """``txn.commit``'s participants: each of SHARDS writes ``value`` to its key."""
    return {shard: {"reads": [], "writes": [[key.encode(), pack_value(value)]]} for shard, key in zip(SHARDS, keys)}


def prepare_params(txid: str, shard: str, key: str, value: Any, leader: str) -> dict[str, Any]:
    return {"txid": txid, "shard": shard, "reads": [], "writes": [[key.encode(), pack_value(value)]],
            "participants": SHARDS, "leader": leader, "hop": 1}


async def values(db: commit.Database, keys: list[str]) -> list[Any]:
    return [(await db.get(key)).value for key in keys]


async def assert_unharmed(cluster: LocalCluster, seed: int) -> None:
    """Every node up, the canary as it was, and transfers under Paxos Commit and 2PC still atomic."""
    assert all(cluster.alive(n) for n in cluster.node_ids), {n: cluster.alive(n) for n in cluster.node_ids}
    rng = random.Random(seed)
    async with commit.connect(cluster.config) as db:
        assert (await db.get(CANARY)).value == CANARY_VALUE
        for protocol in ("paxos-commit", "2pc"):
            run = await run_bank(db, ACCOUNTS, protocol, rng, clients=2, transfers_each=2, audits=1,
                                 start_balance=START_BALANCE)
            total = START_BALANCE * len(ACCOUNTS)
            assert sum(run.balances) == total and run.audits == [total], (protocol, run)
    await cluster.wait_unlocked(within_s=10)


# -- A: no message ends a node, or a transaction it has no part in -------------------------------


@pytest.mark.parametrize("protocol", ["2pc", "raft-2pc"])
async def test_paxos_messages_for_a_2pc_txid_in_flight_are_refused_and_its_core_runs_on(
    cluster: LocalCluster, protocol: str, seed: int,
) -> None:
    """A 2b for a 2PC txid, sent to its coordinator or relayed there by an acceptor from a forged 2a, used to
    reach the 2PC core, whose ProtocolError ended the transaction (its client heard CommitUnknown)."""
    coordinator = await cluster.coordinator_of(protocol)
    keys = keys_for(f"stray-paxos-{protocol}-")
    refused: list[str] = []
    ended: list[ClusterError] = []
    async with commit.connect(cluster.config) as db:
        tx = Transaction(db, protocol)
        for key in keys:
            tx.put(key, "never")

        async def commit_it() -> None:
            try:
                await tx.commit()
            except ClusterError as exc:
                ended.append(exc)

        await cluster.drop(coordinator, "shard.prepare")  # the core waits for votes: in flight until its timer
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit_it)
                await cluster.wait_until(lambda: _collecting(cluster, coordinator, tx), VOTE_TIMEOUT_S,
                                         "the coordinator to collect votes")
                forged_2a = {"txid": tx.txid, "shard": SHARDS[0], "value": "prepared", "participants": SHARDS,
                             "leader": coordinator, "hop": 2}
                stray_2b = {"txid": tx.txid, "acceptor": coordinator, "ballot": [0, 0, 0],
                            "values": {shard: "prepared" for shard in SHARDS}, "hop": 3}
                for method, params in (("paxos.phase2a", forged_2a), ("paxos.phase2b", stray_2b)):
                    with pytest.raises(commit.InvalidRequest, match=f"not a message of {protocol} transactions"):
                        await send_raw(cluster, coordinator, method, params)
                    refused.append(method)
        finally:
            await cluster.undrop(coordinator, "shard.prepare")
        assert refused == ["paxos.phase2a", "paxos.phase2b"]
        # aborted by its own vote timer, as it would have been without the messages
        assert len(ended) == 1 and isinstance(ended[0], commit.Conflict) and "no vote from" in ended[0].message, ended
        counts = (await cluster.call(coordinator, "node.status", {}))["transactions"][protocol]
        assert "protocol_error" not in counts, counts
        assert await values(db, keys) == [None, None]
    await assert_unharmed(cluster, seed)


async def _collecting(cluster: LocalCluster, coordinator: str, tx: Transaction) -> bool:
    rows = (await cluster.call(coordinator, "node.status", {}))["in_doubt"]
    return tx.txid is not None and any(r["txid"] == tx.txid and r["state"] == "coordinator:collecting" for r in rows)


# -- B: no key locked for ever -------------------------------------------------------------------


async def test_a_prepare_or_decision_for_a_one_phase_txid_is_refused_and_locks_nothing(
    cluster: LocalCluster, seed: int,
) -> None:
    """A one-phase txid has no PREPARE: a prepared one would be asked about at its own shard for ever."""
    leaders = await cluster.leaders()
    shard, key = SHARDS[0], keys_for("one-phase-prepare-")[0]
    txid = new_txid("1pc", shard=shard)
    prepare = {**prepare_params(txid, shard, key, "locked?", leaders[COORDINATOR_GROUP]), "participants": [shard]}
    decide = {"txid": txid, "shard": shard, "outcome": "committed"}
    for method, params in (("shard.decide", decide), ("shard.prepare", prepare)):
        with pytest.raises(commit.InvalidRequest, match=f"{method} is not a message of 1pc transactions"):
            await send_raw(cluster, leaders[shard], method, params, as_node=leaders[COORDINATOR_GROUP])
    row = (await cluster.shard_leader_rows())[shard]
    assert (row["prepared"], row["locks"]) == (0, 0)
    await assert_unharmed(cluster, seed)


async def test_a_phase_1a_at_a_ballot_no_leader_has_made_is_refused_and_the_txid_is_recovered(
    cluster: LocalCluster, seed: int,
) -> None:
    """A promise to ballot (2^64-1, 0, 0) outranked every real leader: the transaction was never recovered."""
    leaders = await cluster.leaders()
    leader = leaders[COORDINATOR_GROUP]
    keys = keys_for("future-ballot-")
    txid = new_txid("paxos-commit", SHARDS)
    for raw_ballot in ([2**64 - 1, 0, 0], [2**64 - 1, 2**64 - 1, 2**64 - 1]):
        for acceptor in cluster.config.coordinator_members:
            with pytest.raises(commit.InvalidRequest, match="not of a term a leader has had"):
                await send_raw(cluster, acceptor, "paxos.phase1a", {
                    "txid": txid, "ballot": raw_ballot, "participants": SHARDS, "instances": SHARDS}, as_node=leader)
    # Both participants prepare it, as a leader's PREPARE would have them, and no leader runs it: they are in
    # doubt, ask, and the coordinator group's leader recovers their ballot-0 votes from the acceptors.
    for shard, key in zip(SHARDS, keys):
        vote = await send_raw(cluster, leaders[shard], "shard.prepare", prepare_params(txid, shard, key, 1, leader),
                              as_node=leader)
        assert vote == {"vote": "yes"}
    await cluster.wait_unlocked(within_s=15)
    async with commit.connect(cluster.config) as db:
        assert await db.status(txid, tuple(SHARDS)) == "committed"
        assert await values(db, keys) == [1, 1]
    await assert_unharmed(cluster, seed)


async def test_a_resent_commit_with_other_writes_is_refused_and_a_decided_one_sends_no_decision_again(
    cluster: LocalCluster, seed: int,
) -> None:
    """A resend of a finished raft-2pc txid with other writes was answered "committed" (nothing of it was
    applied), and every resend ran the protocol again, sending the decision once more."""
    leader = (await cluster.leaders())[COORDINATOR_GROUP]
    keys = keys_for("resent-commit-")
    txid = new_txid("raft-2pc", payload(keys, 1))
    commit_params = {"txid": txid, "participants": payload(keys, 1)}
    assert await send_raw(cluster, leader, "txn.commit", commit_params) == {"outcome": "committed"}
    first = (await cluster.settled_trace(txid))["messages_by_type"]
    assert await send_raw(cluster, leader, "txn.commit", commit_params) == {"outcome": "committed"}
    with pytest.raises(commit.InvalidRequest, match="other reads and writes"):
        await send_raw(cluster, leader, "txn.commit", {"txid": txid, "participants": payload(keys, 2)})
    assert (await cluster.settled_trace(txid))["messages_by_type"] == first
    async with commit.connect(cluster.config) as db:
        assert await values(db, keys) == [1, 1]
    await assert_unharmed(cluster, seed)


# -- C: a decision for a txid a shard never prepared ends ------------------------------------


async def test_a_commit_for_a_txid_the_shard_never_prepared_is_not_prepared_and_fences_it(
    cluster: LocalCluster, seed: int,
) -> None:
    """It answered ``internal``, which a coordinator re-sends for ever; a PREPARE after it could then lock."""
    leaders = await cluster.leaders()
    shard, key = SHARDS[0], keys_for("never-prepared-")[0]
    txid = new_txid("raft-2pc", SHARDS)
    coordinator = leaders[COORDINATOR_GROUP]
    with pytest.raises(NotPrepared, match="never prepared"):
        await send_raw(cluster, leaders[shard], "shard.decide", {"txid": txid, "shard": shard, "outcome": "committed"},
                       as_node=coordinator)
    vote = await send_raw(cluster, leaders[shard], "shard.prepare", prepare_params(txid, shard, key, 1, coordinator),
                          as_node=coordinator)
    assert vote["vote"] == "no", vote
    row = (await cluster.shard_leader_rows())[shard]
    assert (row["prepared"], row["locks"]) == (0, 0)
    await assert_unharmed(cluster, seed)


async def test_a_not_prepared_answer_acknowledges_the_decision_so_it_is_not_sent_again() -> None:
    """The coordinator's resend loop (``NodeExecutors._decide``) treats ``not_prepared`` as done."""

    async def decide(shard: str, txid: str, outcome: str, hop: int) -> None:
        raise NotPrepared(f"{shard} never prepared {txid}")

    fed: list[Any] = []
    manager = SimpleNamespace(resend_s=1.0, peers=SimpleNamespace(decide=decide))
    run = SimpleNamespace(txid="raft-2pc:t", hop=1, feed=fed.append)
    await NodeExecutors(manager)._decide(run, "shard-0", "committed")  # type: ignore[arg-type]
    assert [(type(e), e.participant) for e in fed] == [(Acked, "shard-0")]


# -- D: a session's results stay bounded, exactly-once ---------------------------------------


async def test_a_session_whose_low_water_never_rises_is_refused_beyond_its_window_and_stays_exactly_once(
    cluster: LocalCluster, seed: int,
) -> None:
    """Results used to pile up without bound for a client that kept low_water at 1."""
    key = keys_for("session-window-")[0]
    group = shard_group(0)
    leader = (await cluster.leaders())[group]
    session = (await send_raw(cluster, leader, "session.open", {"group": group}))["session"]

    async def put(seq: int, low_water: int) -> int:
        params = {"key": key.encode(), "value": pack_value(seq), "session": [session, seq, low_water]}
        return (await send_raw(cluster, leader, "kv.put", params))["version"]

    versions = [await put(seq, 1) for seq in range(1, WINDOW + 1)]
    with pytest.raises(commit.Unavailable, match="max_results_per_session"):
        await put(WINDOW + 1, 1)
    assert await put(1, 1) == versions[0]  # every result is still held: a retry is not applied again
    assert await put(WINDOW + 1, 2) > versions[-1]  # the client moved its low water: the window moved
    async with commit.connect(cluster.config) as db:
        assert (await db.get(key)).value == WINDOW + 1
    await assert_unharmed(cluster, seed)


# -- E: status questions about unknown txids grow nothing ------------------------------------


async def test_status_questions_about_unknown_paxos_txids_write_nothing_at_the_acceptors(
    cluster: LocalCluster, seed: int,
) -> None:
    """Each one used to start a recovery: promises and acceptances in every acceptor's memory and log.

    The logs may still grow meanwhile with the forgetting of earlier tests' transactions (a ``finished``
    batch every ``limits.forget_interval_s``), so what is checked is that no record names these txids.
    """
    leader = (await cluster.leaders())[COORDINATOR_GROUP]
    logs = [cluster.config.node_dir(n) / "acceptor.log" for n in cluster.config.coordinator_members]
    asked = []
    for _ in range(20):
        txid = new_txid("paxos-commit", SHARDS)
        asked.append(txid)
        assert await send_raw(cluster, leader, "txn.status", {"txid": txid, "participants": SHARDS}) == {
            "outcome": "aborted"}
    written = b"".join(log.read_bytes() for log in logs)
    assert [txid for txid in asked if txid.encode() in written] == []
    await assert_unharmed(cluster, seed)


async def test_a_2pc_txid_answered_aborted_never_commits_even_after_its_coordinator_restarts(
    cluster: LocalCluster, seed: int,
) -> None:
    """The 2pc coordinator fenced unknown txids in a set in memory: it grew with every question, and a
    commit re-sent after a restart committed a txid that had been answered "aborted"."""
    coordinator = cluster.config.twopc_coordinator
    decision_log = cluster.config.node_dir(coordinator) / "2pc.log"
    size = decision_log.stat().st_size
    keys = keys_for("fenced-2pc-")
    txids = [new_txid("2pc", payload(keys, 1)) for _ in range(20)]
    for txid in txids:
        assert await send_raw(cluster, coordinator, "txn.status", {"txid": txid, "participants": SHARDS}) == {
            "outcome": "aborted"}
    assert decision_log.stat().st_size == size  # the participants fenced them: nothing to remember here
    cluster.kill(coordinator)
    cluster.start(coordinator)
    await cluster.wait_ready()
    with pytest.raises(commit.Conflict, match="aborted"):
        await send_raw(cluster, coordinator, "txn.commit", {"txid": txids[0], "participants": payload(keys, 1)})
    async with commit.connect(cluster.config) as db:
        assert await values(db, keys) == [None, None]
    await assert_unharmed(cluster, seed)


# -- F: depth ---------------------------------------------------------------------------------


async def test_a_parameter_nested_a_thousand_deep_is_invalid_request(cluster: LocalCluster, seed: int) -> None:
    """It answered ``internal``: the repr of the parameter in the error message hit Python's recursion limit."""
    deep: Any = SHARDS[0]
    for _ in range(1000):
        deep = [deep]
    for node in cluster.node_ids:
        with pytest.raises(commit.InvalidRequest, match="max_nesting_depth"):
            await send_raw(cluster, node, "txn.status", {"txid": new_txid("2pc", SHARDS), "participants": deep})
    await assert_unharmed(cluster, seed)


def test_every_method_about_a_transaction_says_which_txids_it_takes() -> None:
    """``TXID_METHODS`` names real methods, and a new method about a txid must be entered there."""
    node_like = SimpleNamespace(config=load_config(Path(__file__).parent.parent / "cluster.toml"), node_id="n1",
                                paxos=SimpleNamespace())
    routes = set(node_routes(node_like))  # type: ignore[arg-type]
    about_no_txid = {"kv.get", "kv.put", "kv.delete", "session.open", "node.status", "node.compact", "coord.epoch",
                     "test.hold", "test.transfer_leader", "test.fault",
                     "saga.start", "saga.list", "saga.show", "saga.retry", "saga.skip", "saga.compensate"}
    assert set(TXID_METHODS) == routes - about_no_txid


# -- a transaction too big for one Raft entry -------------------------------------------------------


async def test_a_one_shard_transaction_with_100000_writes_is_refused_and_no_election_follows(
    cluster: LocalCluster, seed: int,
) -> None:
    """It used to be one 2 MB Raft entry whose apply stalled every replica's tick thread: repeated elections."""
    shard = SHARDS[0]
    key = keys_for("huge-")[0]
    writes = [[f"{key}-{i}".encode(), b"\x01"] for i in range(100_000)]
    leaders = await cluster.leaders()
    terms = {r["group"]: r.get("term") for r in await cluster.status() if r.get("role") == "leader"}
    params = {"txid": new_txid("1pc", shard=shard), "shard": shard, "reads": [], "writes": writes}
    with pytest.raises(commit.InvalidRequest, match="at most 4096 keys per shard and transaction"):
        await cluster.call(leaders[shard], "txn.commit_one", params)
    assert {r["group"]: r.get("term") for r in await cluster.status() if r.get("role") == "leader"} == terms
    await assert_unharmed(cluster, seed)


async def test_a_txid_commits_only_with_the_reads_and_writes_it_was_made_for(cluster: LocalCluster, seed: int) -> None:
    """A client that learns an in-flight txid (``node.py status`` lists them) cannot commit it with other
    writes at a coordinator that never saw it (after a failover, say): the txid binds its payload."""
    leader = (await cluster.leaders())[COORDINATOR_GROUP]
    keys = keys_for("bound-payload-")
    for protocol in ("paxos-commit", "raft-2pc", "3pc"):
        txid = new_txid(protocol, payload(keys, 1))  # made by its client, never sent
        coordinator = cluster.config.twopc_coordinator if protocol == "3pc" else leader
        with pytest.raises(commit.InvalidRequest, match="other reads and writes than"):
            await send_raw(cluster, coordinator, "txn.commit", {"txid": txid, "participants": payload(keys, 2)})
    async with commit.connect(cluster.config) as db:
        assert await values(db, keys) == [None, None]
    await assert_unharmed(cluster, seed)
