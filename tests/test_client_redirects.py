"""The client follows a ``not_leader`` redirect only to a member of the group (in-process servers)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import trio

import commit
from commit.config import parse_config
from consensus.errors import NotLeader
from consensus.rpc import RpcSettings, serve_rpc

SETTINGS = RpcSettings(max_frame_bytes=1 << 20, handshake_timeout_s=5.0, max_in_flight_per_connection=16)


def _config(ports: list[int]) -> commit.ClusterConfig:
    nodes = "".join(
        f'[[nodes]]\nid = "n{i + 1}"\nrpc_port = {port}\nraft_port = {20000 + 10 * i}\n' for i, port in enumerate(ports)
    )
    return parse_config(nodes + "[shards]\ncount = 1\n[timeouts]\nclient_deadline_s = 5.0\n", Path("/cfg/cluster.toml"))


async def test_a_redirect_to_a_node_the_config_does_not_have_is_not_followed(nursery: trio.Nursery) -> None:
    """A confused or hostile node naming 'n99' as leader used to raise ConfigError in the caller."""
    asked: list[str] = []

    def router(node_id: str, leader: bool) -> dict[str, Any]:
        async def get(params: dict[str, Any]) -> dict[str, Any]:
            asked.append(node_id)
            if not leader:
                raise NotLeader(f"{node_id} does not lead shard-0", leader="n99")
            return {"value": msgpack.packb("v"), "version": 7, "exists": True}

        return {"kv.get": get}

    ports = []
    for node_id, leader in (("n1", False), ("n2", True), ("n3", False)):
        listeners = await nursery.start(partial(
            serve_rpc, router(node_id, leader), node_id=node_id, host="127.0.0.1", port=0, settings=SETTINGS))
        ports.append(listeners[0].socket.getsockname()[1])
    async with commit.connect(_config(ports)) as db:
        with trio.fail_after(5):
            assert await db.get("k") == ("v", 7, True)
    assert asked[0] == "n1" and asked[-1] == "n2"
