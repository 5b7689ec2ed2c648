"""In-doubt participants resolve concurrently (issue 9.3): a dead 2pc coordinator never delays Paxos Commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import commit
from commit.config import shard_group
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard
from tests.conftest import _started

pytestmark = pytest.mark.cluster
BLOCKED_2PC = 5
HOLD = "coordinator.after_votes"


@pytest.fixture
def dedicated_coordinator_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """n1 coordinates 2pc and hosts no replica, so killing it leaves every group whole."""
    options = {
        "coordinator_members": ["n2", "n3", "n4"], "shard_members": ["n2", "n3", "n4"],
        "transactions": {"fault_hooks": True, "in_doubt_timeout_s": 0.5, "twopc_coordinator": "n1"},
    }
    yield from _started(tmp_path, node_ids=["n1", "n2", "n3", "n4"], options=options)


async def test_paxos_recovery_is_not_held_up_by_blocked_2pc_transactions(
    dedicated_coordinator_cluster: LocalCluster,
) -> None:
    cluster = dedicated_coordinator_cluster
    keys = keys_on_each_shard("fanout-", BLOCKED_2PC + 1, 3)
    async with commit.connect(cluster.config) as db:
        async with trio.open_nursery() as committers:  # clients that give up when the coordinator dies
            for i in range(BLOCKED_2PC):
                await cluster.start_held_transfer(db, "2pc", HOLD, keys[0][i], keys[1][i], committers)
            cluster.kill("n1")  # five 2pc transactions in doubt, their coordinator gone
            committers.cancel_scope.cancel()
        leader = (await cluster.leaders())["coord"]
        async with trio.open_nursery() as committer:
            tx = await cluster.start_held_transfer(db, "paxos-commit", HOLD, keys[0][-1], keys[1][-1], committer)
            cluster.kill(leader)
            committer.cancel_scope.cancel()
        killed = trio.current_time()

        async def resolved() -> bool:
            try:
                states = [await cluster.shard_state(tx.txid, s) for s in (shard_group(0), shard_group(1))]
            except (commit.ClusterError, KeyError, trio.TooSlowError):
                return False  # a shard is electing a new leader
            return all(s in ("committed", "aborted") for s in states)

        await cluster.wait_until(resolved, 60, "the paxos-commit transfer to be resolved")
        elapsed = trio.current_time() - killed
        print(f"paxos-commit resolved {elapsed:.1f}s after its leader was killed, "
              f"with {BLOCKED_2PC} 2pc transactions in doubt on the same shards")
        rows = await cluster.shard_leader_rows()
        assert rows[shard_group(0)]["prepared"] == BLOCKED_2PC  # still blocked: their coordinator is dead
    assert elapsed < 10, f"resolution waited {elapsed:.1f}s behind the blocked 2pc transactions"
