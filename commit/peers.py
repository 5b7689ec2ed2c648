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

from commit.config import COORDINATED_BY_NODE, COORDINATOR_GROUP, THREE_PHASE
from commit.coordinator import UNKNOWN
from commit.tracing import Tracer
from commit.txids import ONE_PHASE, are_participants_of, authority_of
from consensus.errors import ClusterError

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
            state = await self.query(shard, txid)
            return state in ("prepared", "committed"), state
        params = {"txid": txid, "shard": shard, **payload, **meta}
        reply = await self.call_group_traced(shard, "shard.prepare", params, "prepare", meta["hop"])
        return reply["vote"] == "yes", reply.get("reason", "")

    async def query(self, shard: str, txid: str) -> str:
        """The shard's state for txid; a shard that never prepared it records it aborted first."""
        reply = await self.db.call_group(shard, "shard.query", {"txid": txid, "shard": shard})
        return reply["state"]

    async def decide(self, shard: str, txid: str, outcome: str, hop: int) -> None:
        params = {"txid": txid, "shard": shard, "outcome": outcome}
        kind = "commit" if outcome == "committed" else "abort"
        await self.call_group_traced(shard, "shard.decide", params, kind, hop)

    async def participants_know(self, txid: str, participants: tuple[str, ...], timeout_s: float) -> str:
        """3PC keeps no coordinator record: a decided participant is the answer (asking fences a shard
        that never prepared txid, as a NO vote would). ``pending`` while none has decided."""
        states = set()
        for shard in participants:
            with trio.move_on_after(timeout_s):
                try:
                    states.add(await self.query(shard, txid))
                except ClusterError as exc:
                    log.info("%s: %s did not say its state: %s", txid, shard, exc)
        for outcome in ("committed", "aborted"):
            if outcome in states:
                return outcome
        return "pending"

    async def status(self, txid: str, participants: tuple[str, ...] = ()) -> str:
        """The outcome as the authority for txid knows it: committed, aborted or pending.

        For 3PC the authority is the participants themselves: with the participant list this asks them,
        so the answer does not need the coordinator (which may be dead: that is 3PC's point). A list that
        is not txid's own is answered ``unknown`` here, without asking anyone: asking would fence shards
        that are not participants, or let a recovery decide over part of the transaction.
        """
        protocol, shard = authority_of(txid)
        if protocol == ONE_PHASE and shard is not None:
            return await self.query(shard, txid)
        if participants and not are_participants_of(txid, participants):
            return UNKNOWN
        if protocol in THREE_PHASE and participants:
            return await self.participants_know(txid, participants, self.db.config.timeouts.request_s)
        params: dict[str, Any] = {"txid": txid}
        if participants:
            params["participants"] = list(participants)
        if protocol in COORDINATED_BY_NODE:
            reply = await self.db.call_node(self.db.config.twopc_coordinator, "txn.status", params)
        else:
            reply = await self.db.call_group(COORDINATOR_GROUP, "txn.status", params)
        return reply["outcome"]
