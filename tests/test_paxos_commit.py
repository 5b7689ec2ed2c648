"""Paxos Commit and Faster Paxos Commit against real node processes: costs, leader and acceptor crashes."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

import commit
from commit.tooling.admin import transaction_trace
from commit.config import shard_group
from commit.tooling.localcluster import LocalCluster, commit_in_background
from commit.routing import keys_on_each_shard
from commit.protocols.registry import PROTOCOLS
from commit.tooling.traces import summarize
from tests.conftest import _started
from tests.test_transactions import quick

pytestmark = pytest.mark.cluster
PAXOS = ["paxos-commit", "fast-paxos-commit"]
F = 1  # 3 acceptors


def expected_costs(protocol: str, n: int) -> dict[str, int]:
    """Per transaction of n participants (the registry's formulas; docs/PROTOCOLS.md describes the variant)."""
    costs = PROTOCOLS[protocol].costs(n, F)
    return {"messages": costs.messages, "forced_writes": costs.forced_writes, "message_delays": costs.message_delays}


@pytest.fixture(scope="module")
def quiet_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Slow resends, so that no retransmission muddies the message counts."""
    options = {"transactions": {"decision_resend_s": 3.0, "vote_timeout_s": 4.0}}
    yield from _started(tmp_path_factory.mktemp("quiet"), options=options)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("protocol", ["2pc", "raft-2pc", *PAXOS])
async def test_messages_and_forced_writes_match_the_formulas(quiet_cluster: LocalCluster, protocol: str,
                                                              n: int) -> None:
    keys = [shard_keys[0] for shard_keys in keys_on_each_shard(f"cost-{protocol}-{n}-", 1, 3)[:n]]
    async with commit.connect(quiet_cluster.config) as db:
        async with db.transaction(protocol) as tx:
            for key in keys:
                tx.put(key, n)
        summary = await quiet_cluster.settled_trace(tx.txid)
    print(protocol, n, summary)
    measured = {k: summary[k] for k in ("messages", "forced_writes", "message_delays")}
    assert measured == expected_costs(protocol, n), summary["messages_by_type"]


# -- crashes ---------------------------------------------------------------------------------


async def _coordinator_state(cluster: LocalCluster, node_id: str, txid: str) -> str | None:
    rows = (await cluster.call(node_id, "node.status", {}))["in_doubt"]
    return next((r["state"] for r in rows if r["txid"] == txid), None)


async def _decided_at(cluster: LocalCluster, node_id: str, tx: commit.Transaction) -> bool:
    """Whether the coordinator core on ``node_id`` has decided tx (and is maybe held there)."""
    return tx.txid is not None and await _coordinator_state(cluster, node_id, tx.txid) in (
        "coordinator:decided", "coordinator:done")


@pytest.mark.parametrize("protocol", PAXOS)
async def test_leader_killed_after_the_votes_reached_the_acceptors_commits(
    hook_cluster: LocalCluster, protocol: str
) -> None:
    cluster = hook_cluster
    src, dst = [k[0] for k in keys_on_each_shard(f"after-{protocol}-", 1, 3)[:2]]
    leader = (await cluster.leaders())["coord"]
    async with commit.connect(cluster.config) as db:
        async with trio.open_nursery() as committer:
            tx = await cluster.start_held_transfer(db, protocol, "coordinator.after_votes", src, dst, committer,
                                                   until_prepared=protocol == "paxos-commit")

            await cluster.wait_until(partial(_decided_at, cluster, leader, tx), 10,
                                     "the leader to learn the outcome (and hold)")
            cluster.kill(leader)
            committer.cancel_scope.cancel()
        killed = trio.current_time()
        await cluster.wait_unlocked(within_s=15)
        elapsed = trio.current_time() - killed
        assert await db.status(tx.txid, participants=(shard_group(0), shard_group(1))) == "committed"
        assert ((await db.get(src)).value, (await db.get(dst)).value) == (70, 30)
    print(f"{protocol}: committed without leader {leader}, locks released {elapsed:.2f}s after the kill")


@pytest.mark.parametrize("protocol", PAXOS)
async def test_leader_killed_before_every_vote_arrived_aborts(hook_cluster: LocalCluster, protocol: str) -> None:
    cluster = hook_cluster
    src, dst = [k[0] for k in keys_on_each_shard(f"before-{protocol}-", 1, 3)[:2]]
    leaders = await cluster.leaders()
    silent = leaders[shard_group(1)]  # this node's shards prepare but never send their 2a
    await cluster.call(silent, "test.hold", {"point": "participant.before_2a"})
    async with commit.connect(cluster.config) as db:
        async with trio.open_nursery() as committer:
            tx = await cluster.start_held_transfer(db, protocol, "coordinator.after_votes", src, dst, committer)
            cluster.kill(leaders["coord"])
            committer.cancel_scope.cancel()
        await cluster.wait_unlocked(within_s=20)
        assert await db.status(tx.txid, participants=(shard_group(0), shard_group(1))) == "aborted"
        assert ((await db.get(src)).value, (await db.get(dst)).value) == (100, 0)


async def test_one_acceptor_down_changes_nothing_for_clients(hook_cluster: LocalCluster) -> None:
    cluster = hook_cluster
    leader = (await cluster.leaders())["coord"]
    victim = next(n for n in cluster.node_ids if n != leader)
    accounts = [k[0] for k in keys_on_each_shard("one-down-", 1, 3)]
    async with commit.connect(cluster.config) as db:
        for account in accounts:
            await db.put(account, 100)
        cluster.kill(victim)
        await cluster.wait_ready()
        for i in range(10):
            async with db.transaction("paxos-commit") as tx:
                a = (await tx.get(accounts[i % 3])).value
                b = (await tx.get(accounts[(i + 1) % 3])).value
                tx.put(accounts[i % 3], a - 1)
                tx.put(accounts[(i + 1) % 3], b + 1)
        assert sum([(await db.get(a)).value for a in accounts]) == 300
        summary = summarize(await transaction_trace(cluster.config, tx.txid))
        assert summary["messages_by_type"]["2b"] == 2  # the two live acceptors answered


@pytest.fixture
def split_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Shards on n1-n3, acceptors (the coordinator group) on n3-n5."""
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    options = {"coordinator_members": ["n3", "n4", "n5"], "shard_members": ["n1", "n2", "n3"]}
    yield from _started(tmp_path, node_ids=nodes, options=options)


async def test_two_of_three_acceptors_down_waits_then_finishes(split_cluster: LocalCluster) -> None:
    """Killing n4 and n5 leaves the shards whole but the acceptors without a quorum."""
    if True:
        cluster = split_cluster
        src, dst = [k[0] for k in keys_on_each_shard("quorum-", 1, 3)[:2]]
        async with commit.connect(cluster.config) as db:
            await db.put(src, 100)
            await db.put(dst, 0)
            cluster.kill("n4")
            cluster.kill("n5")
            done = trio.Event()

            @commit.transactional
            async def transfer(tx: commit.Transaction) -> None:
                tx.put(src, (await tx.get(src)).value - 30)
                tx.put(dst, (await tx.get(dst)).value + 30)

            async def run() -> None:
                await db.run(transfer, protocol="paxos-commit")
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await trio.sleep(4)
                assert not done.is_set()
                async with commit.connect(quick(cluster.config, 1.5)) as impatient:
                    for key in (src, dst):
                        try:
                            value = (await impatient.get(key)).value
                        except (commit.Unavailable, commit.Timeout):
                            continue  # locked by the transaction in doubt: no reader sees half of it
                        assert value == (100 if key == src else 0), (key, value)
                cluster.start("n4")
                with trio.fail_after(30):
                    await done.wait()
            assert ((await db.get(src)).value, (await db.get(dst)).value) == (70, 30)
            await cluster.wait_unlocked(within_s=15)


# -- status questions never decide over a list the cluster did not record ----------------------------


@pytest.fixture
def patient_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Fault hooks on, and participants that wait a minute before asking about a transaction in doubt,
    so that only the test's own status questions reach the new leader."""
    options = {"transactions": {"fault_hooks": True, "in_doubt_timeout_s": 60.0}}
    yield from _started(tmp_path, options=options)


@pytest.mark.parametrize("protocol", PAXOS)
async def test_a_status_question_with_part_of_the_participants_never_commits_half(
    patient_cluster: LocalCluster, protocol: str
) -> None:
    """Issue 9.1: shard-1 votes NO, the leader dies after the votes; status(txid, [shard-0]) must not commit."""
    cluster = patient_cluster
    src, dst = [k[0] for k in keys_on_each_shard(f"half-{protocol}-", 1, 3)[:2]]
    leader = (await cluster.leaders())["coord"]
    async with commit.connect(cluster.config) as db:
        tx = await cluster.held_transfer(db, protocol, "coordinator.after_votes", src, dst)
        await db.put(dst, 5)  # the transfer's read of dst is now stale: shard-1 votes NO
        async with trio.open_nursery() as committer:
            commit_in_background(tx, committer)

            await cluster.wait_until(partial(_decided_at, cluster, leader, tx), 10,
                                     "the leader to decide (and hold)")
            cluster.kill(leader)
            committer.cancel_scope.cancel()
        await cluster.wait_ready()
        asked_about_half = await db.status(tx.txid, participants=(shard_group(0),))
        assert asked_about_half != "committed", asked_about_half
        whole = (shard_group(0), shard_group(1))

        async def decided() -> str | None:
            outcome = await db.status(tx.txid, participants=whole)
            return outcome if outcome in ("committed", "aborted") else None

        assert await cluster.wait_until(decided, 15, "the outcome over the recorded participants") == "aborted"
        await cluster.wait_unlocked(within_s=15)
        assert ((await db.get(src)).value, (await db.get(dst)).value) == (100, 5)


@pytest.mark.parametrize("protocol", PAXOS)
async def test_an_abort_says_which_shard_voted_no_and_why(quiet_cluster: LocalCluster, protocol: str) -> None:
    """Issue 9.5: a NO vote answered at once is reported as that vote, not as 'votes timed out'."""
    src, dst = [k[0] for k in keys_on_each_shard(f"why-{protocol}-", 1, 3)[:2]]
    async with commit.connect(quiet_cluster.config) as db:
        for attempt in range(5):
            await db.put(src, 100)
            await db.put(dst, 0)
            tx = commit.Transaction(db, protocol)
            tx.put(src, (await tx.get(src)).value - 30)
            tx.put(dst, (await tx.get(dst)).value + 30)
            await db.put(dst, 5)  # stale read on shard-1
            with pytest.raises(commit.Conflict) as caught:
                await tx.commit()
            message = str(caught.value)
            assert shard_group(1) in message and "voted no" in message and "stale" in message, message
            assert "timed out" not in message, message


PAUSED_VOTE_TIMEOUT_S = 1.5


@pytest.fixture
def pausable_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    options = {"transactions": {"fault_hooks": True, "in_doubt_timeout_s": 0.5,
                                "vote_timeout_s": PAUSED_VOTE_TIMEOUT_S}}
    yield from _started(tmp_path, options=options)


async def _recovery_messages_from(cluster: LocalCluster, node_id: str, txid: str) -> int:
    events = (await cluster.call(node_id, "node.trace", {"txid": txid}))["events"]
    return sum(1 for e in events if e["event"] == "message" and e["kind"] == "1a")


async def test_a_paused_old_leader_stops_recovering_once_it_no_longer_leads(pausable_cluster: LocalCluster) -> None:
    """Issue 9.4: an old leader resumed after a higher-rank leader finished the transaction hands over."""
    cluster = pausable_cluster
    old, shard0_leader, shard1_leader = "n1", "n3", "n2"  # n1 has the lowest rank among the acceptors
    await cluster.place_leaders({"coord": old, shard_group(0): shard0_leader, shard_group(1): shard1_leader,
                                 shard_group(2): shard0_leader})
    src, dst = [k[0] for k in keys_on_each_shard("paused-", 1, 3)[:2]]
    await cluster.hold(shard1_leader, "participant.before_2a")  # the old leader keeps waiting for a vote
    async with commit.connect(cluster.config) as db:
        async with trio.open_nursery() as committer:
            tx = await cluster.start_held_transfer(db, "paxos-commit", None, src, dst, committer)
            assert await _coordinator_state(cluster, old, tx.txid) == "coordinator:collecting"
            cluster.pause(old)
            committer.cancel_scope.cancel()
        paused = trio.current_time()
        await cluster.wait_unlocked(within_s=20)  # a new leader recovered it from the acceptors
        print(f"recovered without the paused leader in {trio.current_time() - paused:.1f}s")
        assert await db.status(tx.txid, participants=(shard_group(0), shard_group(1))) == "aborted"
        cluster.resume(old)
        await trio.sleep(2 * PAUSED_VOTE_TIMEOUT_S)  # two of the old leader's vote/recovery timeouts
        first = await _recovery_messages_from(cluster, old, tx.txid)
        await trio.sleep(2 * PAUSED_VOTE_TIMEOUT_S)
        later = await _recovery_messages_from(cluster, old, tx.txid)
        state = await _coordinator_state(cluster, old, tx.txid)
        print(f"old leader {old}: {first} then {later} phase-1a messages, state {state}")
        assert later == first, "the old leader still runs phase 1"
        assert state is None, state


async def test_a_phase_2b_naming_a_shard_that_is_not_a_participant_is_refused_and_the_node_stays_up(
    hook_cluster: LocalCluster,
) -> None:
    """Issue 10: a well-formed 2b for a non-participant used to raise ProtocolError in the core and end the node."""
    cluster = hook_cluster
    src, dst = [k[0] for k in keys_on_each_shard("stray-2b-", 1, 3)[:2]]
    leaders = await cluster.leaders()
    for shard in (shard_group(0), shard_group(1)):
        await cluster.hold(leaders[shard], "participant.before_2a")  # the leader keeps collecting votes
    async with commit.connect(cluster.config) as db, trio.open_nursery() as committer:
        tx = await cluster.start_held_transfer(db, "paxos-commit", None, src, dst, committer)
        stray = {"txid": tx.txid, "acceptor": leaders["coord"], "ballot": [0, 0, 0],
                 "values": {shard_group(2): "prepared"}, "hop": 3}
        with pytest.raises(commit.InvalidRequest, match="not its participants"):
            await cluster.call(leaders["coord"], "paxos.phase2b", stray, as_node=leaders["coord"])
        assert await _coordinator_state(cluster, leaders["coord"], tx.txid) == "coordinator:collecting"
        await cluster.wait_unlocked(within_s=15)  # its vote timer recovered it: aborted, as it should
        assert await db.status(tx.txid, tx.participants) == "aborted"
        assert cluster.alive(leaders["coord"])
        committer.cancel_scope.cancel()
