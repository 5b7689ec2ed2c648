"""Real nodes never serve unauthenticated ports, and a client is not a node.

The cluster here is started from a config with no secret at all, as the
shipped ``cluster.toml`` is: the nodes make both secrets in the data directory
(``commit.credentials``), clients of the same config pick up the client one,
and the Raft ports are signed with the peer one.
"""

from __future__ import annotations

import pickle
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import commit
from commit.config import load_config, shard_group
from commit.credentials import CLIENT_SECRET_FILE, PEER_SECRET_FILE
from commit.node.handlers import NODE_METHODS
from commit.tooling.localcluster import LocalCluster
from commit.txids import new_txid
from tests.conftest import _started
from tests.raw_messages import send_bytes_and_hang_up

pytestmark = pytest.mark.cluster

CANARY = "auth-canary"


@pytest.fixture(scope="module")
def open_config_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("no-secret"))


class _Exploit:
    """Unpickling this runs code: what any peer could make a node do when its Raft ports took pickles unsigned."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _pysyncobj_frame(message: object) -> bytes:
    """A frame as PySyncObj 0.3.17's TcpConnection reads it without a password: length, zlib(pickle)."""
    data = zlib.compress(pickle.dumps(message), 3)
    return struct.pack("i", len(data)) + data


def test_the_nodes_made_both_secrets_private_and_the_clients_use_only_one(open_config_cluster: LocalCluster) -> None:
    cluster = open_config_cluster
    config = load_config(cluster.config_path)  # what any client of this config sees
    for name in (CLIENT_SECRET_FILE, PEER_SECRET_FILE):
        mode = (config.data_dir / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, (name, stat.filemode(mode))
    assert config.secret is not None and config.peer_secret is None
    assert cluster.config.peer_secret is not None and cluster.config.peer_secret != config.secret

    async def use() -> None:
        async with commit.connect(config) as db:
            version = await db.put(CANARY, "before")
            assert await db.get(CANARY) == ("before", version, True)

    trio.run(use)


def test_a_pickle_sent_to_a_raft_port_runs_nothing(open_config_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = open_config_cluster
    marker = tmp_path / "pwned"
    frame = _pysyncobj_frame(_Exploit(marker))
    ports = [n.raft_port + g.index for n in cluster.config.nodes for g in cluster.config.groups()]

    async def attack() -> None:
        for port in ports:
            await send_bytes_and_hang_up(port, frame, wait_s=0.2)
        await trio.sleep(0.5)

    trio.run(attack)
    assert not marker.exists(), "a node unpickled a stranger's bytes"
    assert all(cluster.alive(n) for n in cluster.node_ids)
    rows = trio.run(cluster.wait_ready)
    assert {r["group"] for r in rows if r.get("role") == "leader"} == {g.name for g in cluster.config.groups()}


def _forged(method: str) -> dict[str, Any]:
    """Well-formed node-to-node messages, as a client holding the client secret might send them."""
    shard = shard_group(0)
    txid = new_txid("paxos-commit", [shard])
    return {
        "shard.prepare": {"txid": txid, "shard": shard, "reads": [], "writes": [], "participants": [shard]},
        "shard.decide": {"txid": txid, "shard": shard, "outcome": "committed"},
        "3pc.join": {"txid": txid, "shard": shard, "round": [1, 1], "leader": "n1"},
        "3pc.move": {"txid": txid, "shard": shard, "round": [1, 1], "leader": "n1", "target": "precommitted"},
        "paxos.phase2a": {"txid": txid, "shard": shard, "participants": [shard], "value": "prepared"},
        "paxos.phase2b": {"txid": txid, "acceptor": "n1", "ballot": [0, 0, 0], "values": {shard: "prepared"}},
        "paxos.learn": {"txid": txid, "acceptor": "n1", "values": {shard: "prepared"}, "participants": [shard]},
        "paxos.phase1a": {"txid": txid, "ballot": [1, 1, 1], "participants": [shard], "instances": [shard]},
        "paxos.accept": {"txid": txid, "ballot": [1, 1, 1], "values": {shard: "prepared"}, "participants": [shard]},
        "paxos.forget": {"leader": "n1", "finished": [[txid, [shard]]]},
        "paxos.learned": {"learned": [[txid, shard, [shard]]]},
    }[method]


@pytest.mark.parametrize("method", sorted(NODE_METHODS))
def test_a_client_cannot_send_what_only_nodes_send(open_config_cluster: LocalCluster, method: str) -> None:
    cluster = open_config_cluster

    async def forge() -> None:
        async with commit.connect(cluster.config) as db:
            version = await db.put(CANARY, method)
            for node_id in cluster.node_ids:
                with pytest.raises(commit.Unauthorized, match=f"{method} is sent by nodes only"):
                    await cluster.call(node_id, method, _forged(method))
            assert await db.get(CANARY) == (method, version, True)

    trio.run(forge)


def test_a_node_cannot_speak_for_another(open_config_cluster: LocalCluster) -> None:
    """Each claim of who sent a message (an acceptor, a leader) must be the node the connection proved."""
    cluster = open_config_cluster
    shard = shard_group(0)
    txid = new_txid("paxos-commit", [shard])
    claims = [
        ("paxos.phase2b", {"txid": txid, "acceptor": "n3", "ballot": [0, 0, 0], "values": {shard: "prepared"}},
         "acceptor 'n3' is not the node that sent this"),
        ("shard.prepare", {"txid": txid, "shard": shard, "reads": [], "writes": [], "participants": [shard],
                           "leader": "n3"}, "leader 'n3' is not the node that sent this"),
        ("3pc.join", {"txid": new_txid("3pc", [shard]), "shard": shard, "round": [1, 1], "leader": "n3"},
         "leader 'n3' is not"),
    ]

    async def forge() -> None:
        leaders = await cluster.leaders()
        for method, params, refusal in claims:
            target = leaders["coord"] if method == "paxos.phase2b" else leaders[shard]
            with pytest.raises(commit.Unauthorized, match=refusal):
                await cluster.call(target, method, params, as_node="n2")

    trio.run(forge)
