"""The RPC methods a node serves, over the replica groups it hosts.

Every parameter is checked here, at the edge, before anything is proposed:
a request with a wrong type or size is answered with ``invalid_request`` and
changes nothing. A request for a group this node does not lead is answered
with ``not_leader`` and the leader's id, so the client goes there directly
(one hop, instead of PySyncObj forwarding through a follower).

Methods (params -> result):

    kv.get        {key}                     -> {value, version, exists}
    kv.put        {key, value, session}     -> {version}
    kv.delete     {key, session}            -> {version}
    coord.epoch   {session}                 -> {epoch}
    node.status   {}                        -> {node, groups: [...]}
    node.compact  {}                        -> {groups: [...]}   (forces log compaction)

``session`` is ``[client_id (16 bytes), seq, low_water]`` (see
``consensus.sessions``); ``value`` is bytes (the client packs it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from commit.config import COORDINATOR_GROUP, ClusterConfig, shard_group
from commit.coordinator import CoordinatorState
from commit.routing import key_bytes, shard_of
from commit.shard import ShardState
from consensus.errors import InvalidRequest, NotLeader, Timeout
from consensus.group import ReplicaGroup
from consensus.sessions import SessionRef

CLIENT_ID_BYTES = 16


def _session(params: dict[str, Any]) -> SessionRef:
    raw = params.get("session")
    if not (isinstance(raw, list) and len(raw) == 3):
        raise InvalidRequest("session must be [client_id, seq, low_water]")
    client_id, seq, low_water = raw
    if not (isinstance(client_id, bytes) and len(client_id) == CLIENT_ID_BYTES):
        raise InvalidRequest(f"session client_id must be {CLIENT_ID_BYTES} bytes")
    for name, n in (("seq", seq), ("low_water", low_water)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidRequest(f"session {name} must be a positive integer")
    if low_water > seq:
        raise InvalidRequest("session low_water must not exceed seq")
    return SessionRef(client_id, seq, low_water)


class NodeService:
    def __init__(self, config: ClusterConfig, node_id: str, groups: dict[str, ReplicaGroup]) -> None:
        self.config = config
        self.node_id = node_id
        self.groups = groups

    def router(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "kv.get": self.kv_get,
            "kv.put": self.kv_put,
            "kv.delete": self.kv_delete,
            "coord.epoch": self.coord_epoch,
            "node.status": self.node_status,
            "node.compact": self.node_compact,
        }

    def _key(self, params: dict[str, Any]) -> bytes:
        if "key" not in params:
            raise InvalidRequest("missing param 'key'")
        return key_bytes(params["key"], self.config.limits.max_key_bytes)

    def _leading(self, name: str) -> ReplicaGroup:
        group = self.groups.get(name)
        if group is None:
            raise NotLeader(f"node {self.node_id} hosts no replica of {name}", leader=None)
        if not group.is_leader():
            leader = group.leader_id()
            raise NotLeader(f"node {self.node_id} does not lead {name}", leader=leader)
        return group

    def _shard_for(self, key: bytes) -> ReplicaGroup:
        return self._leading(shard_group(shard_of(key, self.config.shard_count)))

    async def _propose(self, group: ReplicaGroup, command: Any, session: SessionRef) -> Any:
        with trio.move_on_after(self.config.timeouts.request_s):
            return await group.propose(command, session)
        raise Timeout(f"{group.name}: not replicated within {self.config.timeouts.request_s}s")

    async def kv_get(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key(params)
        group = self._shard_for(key)
        with trio.move_on_after(self.config.timeouts.request_s):
            await group.read_barrier()
            machine = group.machine
            assert isinstance(machine, ShardState)
            cell = machine.read(key)
            return {"value": cell.value, "version": cell.version, "exists": cell.value is not None}
        raise Timeout(f"{group.name}: read barrier not replicated in time", maybe_applied=False)

    async def kv_put(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key(params)
        value = params.get("value")
        if not isinstance(value, bytes):
            raise InvalidRequest(f"value must be bytes (msgpack-packed), got {type(value).__name__}")
        if len(value) > self.config.limits.max_value_bytes:
            raise InvalidRequest(
                f"value of {len(value)} bytes exceeds the limit of {self.config.limits.max_value_bytes} bytes"
            )
        session = _session(params)
        version = await self._propose(self._shard_for(key), ("put", key, value), session)
        return {"version": version}

    async def kv_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._key(params)
        session = _session(params)
        version = await self._propose(self._shard_for(key), ("delete", key), session)
        return {"version": version}

    async def coord_epoch(self, params: dict[str, Any]) -> dict[str, Any]:
        session = _session(params)
        epoch = await self._propose(self._leading(COORDINATOR_GROUP), ("new_epoch",), session)
        return {"epoch": epoch}

    async def node_status(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for group in self.groups.values():
            row = group.status()
            machine = group.machine
            if isinstance(machine, ShardState):
                row["keys"] = machine.live_keys()
            elif isinstance(machine, CoordinatorState):
                row["epoch"] = machine.epoch
            rows.append(row)
        return {"node": self.node_id, "groups": rows}

    async def node_compact(self, params: dict[str, Any]) -> dict[str, Any]:
        for group in self.groups.values():
            group.force_log_compaction()
        return {"groups": sorted(self.groups)}
