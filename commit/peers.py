"""Calls a node makes to other nodes' shards and coordinators, through the client's routing.

A coordinator reaches shard leaders, and an in-doubt shard reaches the
coordinator, with the same machinery as any client (leader cache, redirects,
retries), so node-to-node traffic is authenticated and bounded the same way.
Callers put their own deadline around each call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from commit.config import COORDINATOR_GROUP
from commit.txids import ONE_PHASE, authority_of

if TYPE_CHECKING:
    from commit.client import Database


def wire_payload(reads: Any, writes: Any) -> dict[str, Any]:
    return {"reads": [list(r) for r in reads], "writes": [list(w) for w in writes]}


class Peers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def prepare(self, shard: str, txid: str, payload: dict[str, Any] | None) -> tuple[bool, str]:
        """PREPARE with the payload, or, for a coordinator that recovered without it, a vote query."""
        if payload is None:
            reply = await self.db.call_group(shard, "shard.query", {"txid": txid, "shard": shard})
            return reply["state"] in ("prepared", "committed"), reply["state"]
        reply = await self.db.call_group(shard, "shard.prepare", {"txid": txid, "shard": shard, **payload})
        return reply["vote"] == "yes", reply.get("reason", "")

    async def decide(self, shard: str, txid: str, outcome: str) -> None:
        await self.db.call_group(shard, "shard.decide", {"txid": txid, "shard": shard, "outcome": outcome})

    async def status(self, txid: str) -> str:
        """The outcome as the authority for txid knows it: committed, aborted or pending."""
        protocol, shard = authority_of(txid)
        if protocol == ONE_PHASE and shard is not None:
            reply = await self.db.call_group(shard, "shard.query", {"txid": txid, "shard": shard})
            return reply["state"]
        if protocol == "2pc":
            reply = await self.db.call_node(self.db.config.twopc_coordinator, "txn.status", {"txid": txid})
        else:
            reply = await self.db.call_group(COORDINATOR_GROUP, "txn.status", {"txid": txid})
        return reply["outcome"]
