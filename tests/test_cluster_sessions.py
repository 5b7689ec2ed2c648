"""Exactly-once across session eviction (issue 9.6), against real node processes with a tiny session table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import commit
from commit.config import shard_group
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard, shard_of
from consensus.rpc import RpcClient
from tests.conftest import _started

pytestmark = pytest.mark.cluster
MAX_SESSIONS = 4


@pytest.fixture(scope="module")
def small_table_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("sessions"), options={"raft": {"max_sessions": MAX_SESSIONS}})


async def _evict_everyone(cluster: LocalCluster, key: str) -> None:
    """More new clients than the table holds, each writing on key's shard."""
    shard = shard_of(key.encode(), cluster.shards)
    others = keys_on_each_shard(f"evict-{key}-", MAX_SESSIONS + 2, cluster.shards)[shard]
    for other in others:
        async with commit.connect(cluster.config) as db:
            await db.put(other, "filler")


async def test_a_late_retry_of_a_first_write_after_eviction_is_not_applied(
    small_table_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = small_table_cluster
    key = "late-first"
    sent: list[tuple[str, dict[str, Any]]] = []
    real_call = RpcClient.call

    async def recording_call(self: RpcClient, method: str, params: dict[str, Any]) -> Any:
        if method == "kv.put" and params.get("key") == key.encode():
            sent.append((self.node_id, dict(params)))
        return await real_call(self, method, params)

    monkeypatch.setattr(RpcClient, "call", recording_call)
    async with commit.connect(cluster.config) as first:
        await first.put(key, "first")
    node_id, params = sent[-1]
    await _evict_everyone(cluster, key)
    async with commit.connect(cluster.config) as second:
        acknowledged = await second.put(key, "second")
    leader = (await cluster.leaders())[shard_group(shard_of(key.encode(), cluster.shards))]
    with pytest.raises(commit.ClusterError) as late:
        await cluster.call(leader, "kv.put", params)  # the first client's first write, arriving late
    assert isinstance(late.value, commit.SessionExpired), late.value
    async with commit.connect(cluster.config) as reader:
        assert await reader.get(key) == ("second", acknowledged, True)


async def test_a_client_whose_session_was_evicted_carries_on(small_table_cluster: LocalCluster) -> None:
    cluster = small_table_cluster
    key = "carries-on"
    async with commit.connect(cluster.config) as db:
        await db.put(key, 1)
        await _evict_everyone(cluster, key)
        version = await db.put(key, 2)  # its old session is gone: it opens a new one
        assert await db.get(key) == (2, version, True)
        assert await db.delete(key) > version
