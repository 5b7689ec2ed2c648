"""Link faults (commit.faults): LinkFaults alone, then cut/heal/drop on real node processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import commit
from commit.config import shard_group
from commit.node.faults import LinkFaults
from commit.tooling.fault_requests import link_requests
from commit.tooling.localcluster import ROOT, LocalCluster
from commit.routing import keys_on_each_shard
from consensus.errors import InvalidRequest
from tests.conftest import _started

DISABLED = "fault injection is disabled"


# -- LinkFaults alone -----------------------------------------------------------------


def test_disabled_refuses_every_change_and_loses_nothing() -> None:
    faults = LinkFaults("n1", enabled=False)
    for change in (lambda: faults.cut("n2"), faults.heal, lambda: faults.drop("shard.prepare"), faults.undrop):
        with pytest.raises(InvalidRequest, match=DISABLED):
            change()
    with pytest.raises(InvalidRequest, match=DISABLED):
        faults.require_enabled()
    assert faults.lost("n2", "shard.prepare") is None
    assert faults.describe() == {"node": "n1", "enabled": False, "cut": [], "dropped": [], "lost": 0}
    assert not faults.active()


def test_cut_loses_every_message_to_that_peer_only() -> None:
    faults = LinkFaults("n1", enabled=True)
    faults.cut("n2")
    assert faults.lost("n2", "shard.prepare") == "link n1-n2 cut by fault injection"
    assert faults.lost("n2", "txn.status") == "link n1-n2 cut by fault injection"
    assert faults.lost("n3", "shard.prepare") is None
    assert faults.lost("n1", "shard.prepare") is None
    assert faults.describe()["cut"] == ["n2"] and faults.describe()["lost"] == 2
    assert faults.active()
    with pytest.raises(InvalidRequest, match="itself"):
        faults.cut("n1")


def test_heal_one_peer_or_every_peer() -> None:
    faults = LinkFaults("n1", enabled=True)
    faults.cut("n2")
    faults.cut("n3")
    faults.heal("n3")
    assert faults.lost("n3", "shard.prepare") is None
    assert faults.lost("n2", "shard.prepare") is not None
    faults.heal("n3")  # not cut: nothing to do
    assert faults.describe()["cut"] == ["n2"]
    faults.cut("n3")
    faults.heal()
    assert faults.describe()["cut"] == []
    assert faults.lost("n2", "shard.prepare") is None and faults.lost("n3", "shard.prepare") is None


def test_drop_loses_one_method_to_every_node_and_undrop_restores_it() -> None:
    faults = LinkFaults("n1", enabled=True)
    faults.drop("shard.prepare")
    faults.drop("shard.decide")
    for dest in ("n1", "n2", "n3"):
        assert faults.lost(dest, "shard.prepare") == "shard.prepare from n1 dropped by fault injection"
        assert faults.lost(dest, "shard.query") is None
    faults.undrop("shard.prepare")
    assert faults.lost("n2", "shard.prepare") is None
    assert faults.lost("n2", "shard.decide") is not None
    faults.undrop("kv.get")  # not dropped: nothing to do
    faults.undrop()
    assert faults.describe()["dropped"] == [] and not faults.active()
    assert faults.lost("n2", "shard.decide") is None
    assert faults.describe()["lost"] == 4


@pytest.mark.parametrize("method", [5, None, "", "x" * 65, b"shard.prepare"])
def test_drop_refuses_what_is_not_a_method_name(method: Any) -> None:
    faults = LinkFaults("n1", enabled=True)
    with pytest.raises(InvalidRequest, match="method must be"):
        faults.drop(method)
    assert faults.describe()["dropped"] == []


def test_link_requests_tell_both_ends() -> None:
    nodes = ["n1", "n2", "n3"]
    assert link_requests("cut", "n1", "n2", nodes) == [("n1", {"op": "cut", "peer": "n2"}),
                                                       ("n2", {"op": "cut", "peer": "n1"})]
    assert link_requests("heal", "n2", "n3", nodes) == [("n2", {"op": "heal", "peer": "n3"}),
                                                        ("n3", {"op": "heal", "peer": "n2"})]
    assert link_requests("heal", "n2", None, nodes) == [("n2", {"op": "heal"}), ("n1", {"op": "heal", "peer": "n2"}),
                                                        ("n3", {"op": "heal", "peer": "n2"})]
    assert link_requests("heal", None, None, nodes) == [(n, {"op": "heal"}) for n in nodes]
    for op, a, b in (("cut", "n1", None), ("cut", "n1", "n1"), ("heal", None, "n2"), ("drop", "n1", "n2")):
        with pytest.raises(ValueError):
            link_requests(op, a, b, nodes)


# -- on real nodes --------------------------------------------------------------------

VOTE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def faulty_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Link faults on; the 2pc coordinator n1 hosts no shard, so every PREPARE it sends crosses a link."""
    options = {
        "shard_members": ["n2", "n3"],
        "transactions": {"fault_hooks": True, "twopc_coordinator": "n1", "vote_timeout_s": VOTE_TIMEOUT_S},
    }
    yield from _started(tmp_path_factory.mktemp("faults"), options=options)


@pytest.fixture
def cluster(faulty_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The module's cluster, with every link healed and every method undropped after the test."""
    yield faulty_cluster

    async def clear() -> None:
        await faulty_cluster.heal()
        for node_id in faulty_cluster.node_ids:
            await faulty_cluster.undrop(node_id)

    trio.run(clear)


async def transfer_2pc(db: commit.Database, src: str, dst: str) -> commit.Transaction:
    tx = commit.Transaction(db, "2pc")
    tx.put(src, (await tx.get(src)).value - 1)
    tx.put(dst, (await tx.get(dst)).value + 1)
    await tx.commit()
    return tx


async def values(db: commit.Database, *keys: str) -> list[Any]:
    return [(await db.get(k)).value for k in keys]


def two_keys(prefix: str, shards: tuple[int, int] = (0, 1)) -> tuple[str, str]:
    by_shard = keys_on_each_shard(prefix, 1, 3)
    return by_shard[shards[0]][0], by_shard[shards[1]][0]


@pytest.mark.cluster
async def test_flag_off_refuses_test_fault_and_changes_nothing(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    assert not cluster.config.transactions.fault_hooks
    for params in ({"op": "cut", "peer": "n2"}, {"op": "drop", "method": "shard.prepare"}, {"op": "list"},
                   {"op": "heal"}, {"op": "nonsense"}):
        with pytest.raises(InvalidRequest, match=DISABLED):
            await cluster.call("n1", "test.fault", params)
    with pytest.raises(InvalidRequest, match=DISABLED):
        await cluster.cut("n1", "n2")
    for node_id in cluster.node_ids:
        assert "faults" not in await cluster.call(node_id, "node.status", {})
    src, dst = two_keys("flag-off-")
    async with commit.connect(cluster.config) as db:
        await db.put(src, 10)
        await db.put(dst, 0)
        await transfer_2pc(db, src, dst)
        assert await values(db, src, dst) == [9, 1]


@pytest.mark.cluster
@pytest.mark.parametrize(("params", "match"), [
    ({}, "op must be one of"),
    ({"op": "explode"}, "op must be one of"),
    ({"op": 3}, "op must be one of"),
    ({"op": ["cut"]}, "op must be one of"),
    ({"op": "cut"}, "peer must be a node id"),
    ({"op": "cut", "peer": "n9"}, "peer must be a node id"),
    ({"op": "cut", "peer": 2}, "peer must be a node id"),
    ({"op": "cut", "peer": ["n2"]}, "peer must be a node id"),
    ({"op": "cut", "peer": "n1"}, "itself"),
    ({"op": "heal", "peer": "n9"}, "peer must be a node id"),
    ({"op": "heal", "peer": None}, "peer must be a node id"),
    ({"op": "drop"}, "method must name"),
    ({"op": "drop", "method": 5}, "method must name"),
    ({"op": "drop", "method": "shard.prepare" * 20}, "method must name"),
    ({"op": "drop", "method": "shard.prepar"}, "method must name"),
    ({"op": "undrop", "method": b"shard.prepare"}, "method must name"),
])
async def test_bad_params_are_refused_and_change_nothing(cluster: LocalCluster, params: dict[str, Any],
                                                         match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        await cluster.call("n1", "test.fault", params)
    for faults in (await cluster.faults()).values():
        assert faults["cut"] == [] and faults["dropped"] == [], faults


@pytest.mark.cluster
async def test_partition_cuts_both_directions_and_heal_restores_every_link(cluster: LocalCluster) -> None:
    await cluster.partition(["n1"], ["n2", "n3"])
    faults = await cluster.faults()
    assert {n: f["cut"] for n, f in faults.items()} == {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}
    assert (await cluster.call("n1", "node.status", {}))["faults"]["cut"] == ["n2", "n3"]
    await cluster.heal("n2", "n1")
    assert {n: f["cut"] for n, f in (await cluster.faults()).items()} == {"n1": ["n3"], "n2": [], "n3": ["n1"]}
    await cluster.heal()
    assert all(f["cut"] == [] for f in (await cluster.faults()).values())
    assert "faults" not in await cluster.call("n1", "node.status", {})
    with pytest.raises(InvalidRequest, match="unknown hold point"):
        await cluster.hold("n1", "nowhere")


@pytest.mark.cluster
async def test_2pc_coordinator_cut_from_a_participant_leader_aborts_until_healed(cluster: LocalCluster) -> None:
    coordinator = cluster.config.twopc_coordinator
    leaders = {group: row["node"] for group, row in (await cluster.shard_leader_rows()).items()}
    cut_leader = leaders[shard_group(0)]
    assert cut_leader != coordinator  # n1 hosts no shard in this cluster
    src, dst = two_keys("cut-")
    async with commit.connect(cluster.config) as db:
        await db.put(src, 10)
        await db.put(dst, 0)
        lost_before = (await cluster.faults())[coordinator]["lost"]
        await cluster.cut(coordinator, cut_leader)
        start = trio.current_time()
        with pytest.raises(commit.Conflict, match=rf"no vote from shard-\d(, shard-\d)? within {VOTE_TIMEOUT_S}s") as refused:
            await transfer_2pc(db, src, dst)
        elapsed = trio.current_time() - start
        txid = refused.value.detail["txid"]
        assert await db.status(txid) == "aborted"
        faults = await cluster.faults()
        assert faults[coordinator]["cut"] == [cut_leader] and faults[cut_leader]["cut"] == [coordinator]
        assert faults[coordinator]["lost"] > lost_before
        assert VOTE_TIMEOUT_S <= elapsed < VOTE_TIMEOUT_S + 5, elapsed

        await cluster.heal()
        await cluster.wait_unlocked(within_s=10)
        assert await values(db, src, dst) == [10, 0]
        await transfer_2pc(db, src, dst)
        assert await values(db, src, dst) == [9, 1]


@pytest.mark.cluster
async def test_dropping_prepare_aborts_2pc_and_undrop_restores_it(cluster: LocalCluster) -> None:
    coordinator = cluster.config.twopc_coordinator
    src, dst = two_keys("drop-", (1, 2))
    async with commit.connect(cluster.config) as db:
        await db.put(src, 10)
        await db.put(dst, 0)
        lost_before = (await cluster.faults())[coordinator]["lost"]
        await cluster.drop(coordinator, "shard.prepare")
        with pytest.raises(commit.Conflict, match="no vote from shard-1, shard-2 within") as refused:
            await transfer_2pc(db, src, dst)
        assert await db.status(refused.value.detail["txid"]) == "aborted"
        faults = (await cluster.faults())[coordinator]
        assert faults["dropped"] == ["shard.prepare"] and faults["lost"] > lost_before
        rows = await cluster.shard_leader_rows()
        assert all(row["prepared"] == 0 for row in rows.values()), rows  # no PREPARE ever arrived
        assert await values(db, src, dst) == [10, 0]

        await cluster.undrop(coordinator, "shard.prepare")
        await transfer_2pc(db, src, dst)
        assert await values(db, src, dst) == [9, 1]
    await cluster.wait_unlocked(within_s=10)


@pytest.mark.cluster
def test_cli_fault_commands(cluster: LocalCluster) -> None:
    def node_py(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "node.py"), "--config", str(cluster.config_path),
                               "fault", *args], capture_output=True, text=True, timeout=30)

    cut = node_py("cut", "n2", "n3")
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.splitlines()[0].split() == ["node", "cut", "dropped", "lost", "error"]
    drop = node_py("drop", "n1", "shard.decide", "--json")
    assert drop.returncode == 0, drop.stderr
    assert json.loads(drop.stdout)[0]["dropped"] == ["shard.decide"]
    listed = node_py("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["node"]: row for row in json.loads(listed.stdout)}
    assert {n: (r["cut"], r["dropped"]) for n, r in rows.items()} == {
        "n1": ([], ["shard.decide"]), "n2": (["n3"], []), "n3": (["n2"], [])}
    table = node_py("list").stdout
    assert "shard.decide" in table and "n3" in table
    bad = node_py("drop", "n1", "no.such.method")
    assert bad.returncode == 1 and "method must name" in bad.stdout
    assert node_py("heal").returncode == 0
    assert node_py("undrop", "n1").returncode == 0
    rows = {row["node"]: row for row in json.loads(node_py("list", "--json").stdout)}
    assert all(r["cut"] == [] and r["dropped"] == [] for r in rows.values()), rows
