"""Cross-shard transactions against real node processes, with both 2PC variants."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import commit
from commit.config import ClusterConfig, shard_group
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard
from commit.txids import new_txid
from tests.bank import run_bank
from tests.conftest import _started

pytestmark = pytest.mark.cluster
PROTOCOLS = ["2pc", "raft-2pc"]
ACCOUNTS_PER_SHARD = 2
START_BALANCE = 100


@pytest.fixture(scope="module")
def txn_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("txn"))


def keys_by_shard(count_per_shard: int, prefix: str) -> dict[int, list[str]]:
    return dict(enumerate(keys_on_each_shard(prefix, count_per_shard, 3)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_bank_transfers_keep_the_total(txn_cluster: LocalCluster, protocol: str, seed: int) -> None:
    accounts = [k for keys in keys_by_shard(ACCOUNTS_PER_SHARD, f"{protocol}-acct").values() for k in keys]
    total = START_BALANCE * len(accounts)
    async with commit.connect(txn_cluster.config) as db:
        run = await run_bank(db, accounts, protocol, random.Random(seed), clients=8, transfers_each=15,
                             audits=10, start_balance=START_BALANCE)
    assert run.transfers == 8 * 15
    assert sum(run.balances) == total, run.balances
    assert run.audits and all(a == total for a in run.audits), run.audits
    await txn_cluster.wait_unlocked(within_s=10)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_write_skew_across_shards_never_commits_both(txn_cluster: LocalCluster, protocol: str) -> None:
    by_shard = keys_by_shard(1, f"skew-{protocol}-")
    x, y = by_shard[0][0], by_shard[1][0]
    both = 0
    committed = 0
    async with commit.connect(txn_cluster.config) as db:
        for round_ in range(12):
            await db.put(x, 0)
            await db.put(y, 0)
            t1 = commit.Transaction(db, protocol)
            t2 = commit.Transaction(db, protocol)
            t1.put(y, (await t1.get(x)).value + 1)  # reads x, writes y
            t2.put(x, (await t2.get(y)).value + 1)  # reads y, writes x
            results: dict[str, bool] = {}

            async def attempt(name: str, tx: commit.Transaction) -> None:
                try:
                    await tx.commit()
                    results[name] = True
                except commit.Conflict:
                    results[name] = False

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, "t1", t1)
                nursery.start_soon(attempt, "t2", t2)
            both += results["t1"] and results["t2"]
            committed += results["t1"] + results["t2"]
            final = ((await db.get(x)).value, (await db.get(y)).value)
            assert final in ((0, 0), (0, 1), (1, 0)), (round_, final, results)
    assert both == 0
    assert committed > 0
    await txn_cluster.wait_unlocked(within_s=10)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_aborted_transactions_leave_no_value_and_no_lock(txn_cluster: LocalCluster, protocol: str) -> None:
    by_shard = keys_by_shard(1, f"abort-{protocol}-")
    a, b = by_shard[0][0], by_shard[1][0]
    async with commit.connect(txn_cluster.config) as db:
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with db.transaction(protocol) as tx:
                tx.put(a, "never")
                tx.put(b, "never")
                raise RuntimeError("changed my mind")
        assert (await db.get(a)).exists is False and (await db.get(b)).exists is False

        # A NO vote: b's read is stale by the time the transaction prepares; a's shard votes yes first.
        await db.put(b, "v1")
        tx = commit.Transaction(db, protocol)
        tx.put(a, "half")
        await tx.get(b)
        tx.put(b, "half")
        await db.put(b, "v2")
        with pytest.raises(commit.Conflict, match="stale"):
            await tx.commit()
        assert await db.status(tx.txid) == "aborted"
        assert (await db.get(a)).exists is False
        assert (await db.get(b)).value == "v2"
    await txn_cluster.wait_unlocked(within_s=10)


async def test_single_shard_transaction_is_one_phase(txn_cluster: LocalCluster) -> None:
    key = keys_by_shard(2, "one-")[0]
    async with commit.connect(txn_cluster.config) as db:
        async with db.transaction() as tx:
            tx.put(key[0], 1)
            tx.put(key[1], 2)
        assert tx.txid is not None and tx.txid.startswith(f"1pc:{shard_group(0)}:")
        assert await db.status(tx.txid) == "committed"
        assert [(await db.get(k)).value for k in key] == [1, 2]
        # a status query about a txid nobody knows fences it as aborted (presumed abort)
        unknown = new_txid("raft-2pc", (shard_group(0), shard_group(1)))
        assert await db.status(unknown) == "aborted"


# -- coordinator crashes between the votes and the decision ------------------------------


def quick(config: ClusterConfig, deadline_s: float) -> ClusterConfig:
    return dataclasses.replace(config, timeouts=dataclasses.replace(
        config.timeouts, client_deadline_s=deadline_s, client_attempt_s=min(deadline_s, 1.0)))


async def _start_held_transfer(
    cluster: LocalCluster, db: commit.Database, protocol: str, point: str, nursery: trio.Nursery
) -> tuple[commit.Transaction, str, str]:
    by_shard = keys_by_shard(1, f"held-{protocol}-")
    src, dst = by_shard[0][0], by_shard[1][0]
    tx = await cluster.start_held_transfer(db, protocol, point, src, dst, nursery)
    return tx, src, dst


async def test_raft_2pc_finishes_without_the_dead_coordinator(hook_cluster: LocalCluster) -> None:
    cluster = hook_cluster
    leader = (await cluster.leaders())["coord"]
    async with commit.connect(cluster.config) as db, trio.open_nursery() as nursery:
        tx, src, dst = await _start_held_transfer(cluster, db, "raft-2pc", "coordinator.after_votes", nursery)
        cluster.kill(leader)
        start = trio.current_time()
        await cluster.wait_unlocked(within_s=15)
        elapsed = trio.current_time() - start
        outcome = await db.status(tx.txid)
        values = ((await db.get(src)).value, (await db.get(dst)).value)
        print(f"raft-2pc: {outcome} {elapsed:.2f}s after killing coordinator leader {leader}")
        assert outcome in ("committed", "aborted")
        assert values == ((70, 30) if outcome == "committed" else (100, 0))
        assert elapsed < 10
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("point", "expected"), [
    ("coordinator.after_votes", "aborted"),      # nothing logged: presumed abort after restart
    ("coordinator.after_decision", "committed"),  # commit logged: redone from the log after restart
])
async def test_2pc_blocks_until_its_coordinator_returns(hook_cluster: LocalCluster, point: str, expected: str) -> None:
    cluster = hook_cluster
    coordinator = cluster.config.twopc_coordinator
    async with commit.connect(cluster.config) as db:
        async with trio.open_nursery() as committer:
            tx, src, dst = await _start_held_transfer(cluster, db, "2pc", point, committer)
            cluster.kill(coordinator)
            # The client gives up: its retry would re-send the whole transaction to the restarted
            # coordinator, which may then commit it (all votes still stand). Atomic either way, but
            # this test is about what the coordinator's log alone decides.
            committer.cancel_scope.cancel()
        await cluster.wait_ready()  # shards re-elect without it if it led any
        blocked_for = 3.0
        await trio.sleep(blocked_for)
        rows = await cluster.shard_leader_rows()
        assert rows[shard_group(0)]["prepared"] >= 1 and rows[shard_group(1)]["prepared"] >= 1
        assert rows[shard_group(0)]["locks"] >= 1 and rows[shard_group(1)]["locks"] >= 1
        async with commit.connect(quick(cluster.config, 1.5)) as impatient:
            for key in (src, dst):
                with pytest.raises((commit.Unavailable, commit.Timeout)):
                    await impatient.get(key)  # no reader sees either half while it is in doubt
        in_doubt = []
        for node_id in cluster.node_ids:
            if node_id != coordinator:
                in_doubt += (await cluster.call(node_id, "node.status", {}))["in_doubt"]
        print(f"2pc in doubt after {blocked_for}s: {in_doubt}")
        assert tx.txid in {row["txid"] for row in in_doubt}, in_doubt

        cluster.start(coordinator)
        await cluster.wait_ready()
        await cluster.wait_unlocked(within_s=15)
        assert await db.status(tx.txid) == expected
        values = ((await db.get(src)).value, (await db.get(dst)).value)
        assert values == ((70, 30) if expected == "committed" else (100, 0))


@pytest.fixture
def stubborn_leader_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Leaders that keep leading without a quorum for a while, and a short persist timeout."""
    options = {"raft": {"leader_fallback_timeout_s": 30.0}, "timeouts": {"request_s": 2.0}}
    yield from _started(tmp_path, options=options)


async def test_a_coordinator_that_cannot_persist_its_begin_reports_commit_unknown(
    stubborn_leader_cluster: LocalCluster,
) -> None:
    """Issue 9.5: 'begin not durable' is CommitUnknown for the client, not an internal error."""
    cluster = stubborn_leader_cluster
    by_shard = keys_by_shard(1, "no-quorum-")
    leader = (await cluster.leaders())["coord"]
    followers = [n for n in cluster.node_ids if n != leader]
    participants = {shard_group(0): {"reads": [], "writes": [[by_shard[0][0].encode(), b"\x01"]]},
                    shard_group(1): {"reads": [], "writes": [[by_shard[1][0].encode(), b"\x01"]]}}
    txid = new_txid("raft-2pc", participants)
    for node in followers:
        cluster.pause(node)
    try:
        with pytest.raises(commit.ClusterError) as caught:
            await cluster.call(leader, "txn.commit", {"txid": txid, "participants": participants})
    finally:
        for node in followers:
            cluster.resume(node)
    assert isinstance(caught.value, commit.CommitUnknown), caught.value
    assert "not durable" in caught.value.message, caught.value.message
    await cluster.wait_ready()
    async with commit.connect(cluster.config) as db:
        # Its begin record may have been replicated after all; a status question finishes it (nothing was
        # prepared, so it aborts) instead of leaving it pending until the next leader change.
        async def decided() -> str | None:
            outcome = await db.status(txid, tuple(participants))
            return outcome if outcome in ("committed", "aborted") else None

        assert await cluster.wait_until(decided, 15, "the transaction to be decided") == "aborted"
