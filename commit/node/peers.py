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

import trio

from commit.node.tracing import Tracer
from commit.outcomes import COMMITTED, FORGOTTEN, PREPARED
from commit.status import shard_state
from consensus.errors import ClusterError
from consensus.horizon import Forgotten

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
        """PREPARE with the payload, or, for a coordinator that recovered without it, a vote query.

        ``Forgotten`` if the shard refused the PREPARE as older than what it remembers: that is no vote
        (it may have voted yes and committed long ago), so the coordinator must not abort on it.
        """
        if payload is None:
            state = await shard_state(self.db, shard, txid)
            return state in (PREPARED, COMMITTED), state
        params = {"txid": txid, "shard": shard, **payload, **meta}
        reply = await self.call_group_traced(shard, "shard.prepare", params, "prepare", meta["hop"])
        if reply["vote"] == FORGOTTEN:
            raise Forgotten(f"{shard}: {reply.get('reason', '')}", maybe_applied=True)
        return reply["vote"] == "yes", reply.get("reason", "")

    async def participant_states(self, txid: str, participants: tuple[str, ...], timeout_s: float) -> dict[str, str]:
        """Each participant's state for txid, asked at once (``shard.query``: a shard that never prepared txid
        records it aborted before it answers, so it never will prepare it); one that does not answer within
        ``timeout_s`` is left out."""
        states: dict[str, str] = {}

        async def ask(shard: str) -> None:
            with trio.move_on_after(timeout_s):
                try:
                    states[shard] = await shard_state(self.db, shard, txid)
                except ClusterError as exc:
                    log.info("%s: %s did not say its state: %s", txid, shard, exc)

        async with trio.open_nursery() as nursery:
            for shard in participants:
                nursery.start_soon(ask, shard)
        return states

    async def decide(self, shard: str, txid: str, outcome: str, hop: int) -> None:
        params = {"txid": txid, "shard": shard, "outcome": outcome}
        kind = "commit" if outcome == COMMITTED else "abort"
        await self.call_group_traced(shard, "shard.decide", params, kind, hop)
