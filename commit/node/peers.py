"""Calls a node makes to other nodes' shards and coordinators, through the client's routing.

A coordinator reaches shard leaders, and an in-doubt shard reaches the
coordinator, with the same machinery as any client (leader cache, redirects,
retries), so node-to-node traffic is authenticated and bounded the same way.
Callers put their own deadline around each call. Every protocol message
sent through here is recorded in the node's ``Tracer``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from commit.node.tracing import Tracer
from commit.outcomes import COMMITTED, PREPARED
from commit.status import shard_state

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from commit.client import Database


class Peers:
    def __init__(self, db: Database, tracer: Tracer | None = None) -> None:
        self.db = db
        self.tracer = tracer

    async def call_node(self, node_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.db.call_node(node_id, method, params)

    async def call_group_traced(self, group: str, method: str, params: dict[str, Any], kind: str,
                                hop: int) -> dict[str, Any]:
        """A protocol message to ``group``'s leader, traced as sent to the node that turned out to lead it."""
        sent_at = time.time()
        try:
            return await self.db.call_group(group, method, params)
        finally:
            if self.tracer is not None:
                self.tracer.sent(params["txid"], kind, self.db.leader_of(group) or group, hop, at=sent_at)

    async def prepare(self, shard: str, txid: str, payload: dict[str, Any] | None,
                      meta: dict[str, Any]) -> tuple[bool, str]:
        """PREPARE with the payload, or, for a coordinator that recovered without it, a vote query."""
        if payload is None:
            state = await shard_state(self.db, shard, txid)
            return state in (PREPARED, COMMITTED), state
        params = {"txid": txid, "shard": shard, **payload, **meta}
        reply = await self.call_group_traced(shard, "shard.prepare", params, "prepare", meta["hop"])
        return reply["vote"] == "yes", reply.get("reason", "")

    async def decide(self, shard: str, txid: str, outcome: str, hop: int) -> None:
        params = {"txid": txid, "shard": shard, "outcome": outcome}
        kind = "commit" if outcome == COMMITTED else "abort"
        await self.call_group_traced(shard, "shard.decide", params, kind, hop)
