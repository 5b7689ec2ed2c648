"""Transactions as the client asks for them: commit through a coordinator, or in one phase at one shard.

    txn.commit      {txid, participants}          -> {outcome}   coordinator of txid's protocol
    txn.commit_one  {txid, shard, reads, writes}  -> {outcome}   leader of the one shard
    txn.status      {txid, participants?}         -> {outcome}   coordinator (fences unknown txids)

A txid older than what its coordinator remembers is never run again: ``txn.commit``
answers ``commit_unknown`` with ``outcome: "forgotten"``, and ``txn.status`` answers
``forgotten`` unless a participant still knows the outcome.

``participants`` maps a shard name to ``{reads: [[key, version]...], writes:
[[key, value or nil]...]}`` in ``txn.commit`` and is the list of shard names in
``txn.status``. The txid binds its participants (``commit.txids``): a wrong list
is ``invalid_request`` in ``txn.commit``, and ``txn.status`` answers ``unknown``
for it, because nothing can be looked up, or fenced, over a list the txid does not bind.
"""

from __future__ import annotations

from typing import Any

from commit.errors import CommitUnknown, Conflict
from commit.node.handlers.base import Handler, Handlers
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, UNKNOWN
from commit.txids import are_participants_of, authority_of, check_payloads
from consensus.errors import InvalidRequest


class Transactions(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {"txn.commit": self.commit, "txn.commit_one": self.commit_one, "txn.status": self.status}

    async def commit(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = self.check.txid(params, "txn.commit")
        participants = params.get("participants")
        if not isinstance(participants, dict) or len(participants) < 2:
            raise InvalidRequest("participants must map at least two shard names to their reads and writes")
        payloads: dict[str, dict[str, list[Any]]] = {}
        for shard, payload in participants.items():
            name = self.check.shard_name(shard)
            if not isinstance(payload, dict):
                raise InvalidRequest(f"participant {name}: expected {{reads, writes}}")
            reads, writes = self.check.payload(payload, name)
            payloads[name] = {"reads": [list(r) for r in reads], "writes": [list(w) for w in writes]}
        check_payloads(txid, payloads)
        outcome, reason = await self.manager(txid).commit(txid, payloads)
        if outcome == COMMITTED:
            return {"outcome": COMMITTED}
        if outcome == ABORTED:
            raise Conflict(f"{txid} aborted: {reason}", txid=txid)
        if outcome == FORGOTTEN:
            raise CommitUnknown(f"{txid}: {reason}", txid=txid, outcome=FORGOTTEN)
        raise CommitUnknown(f"{txid}: {reason}", txid=txid)

    async def commit_one(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self.participant(params, "txn.commit_one")
        if authority_of(txid)[1] != group.name:
            raise InvalidRequest(f"{txid} is not a one-phase transaction of {group.name}")
        reads, writes = self.check.payload(params, group.name)
        counts = self.node.one_phase
        try:
            outcome = await self.propose(group, ("commit_one", txid, reads, writes))
        except Conflict:
            counts[ABORTED] += 1
            raise
        self.node.tracer.forced(txid, "shard commit_one")
        counts[COMMITTED] += 1
        return {"outcome": outcome}

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = self.check.txid(params, "txn.status")
        participants = self.check.shards(params["participants"], "participants") if "participants" in params else ()
        if participants and not are_participants_of(txid, participants):
            return {"outcome": UNKNOWN}
        manager = self.manager(txid)
        outcome = await self.within_request_timeout("txn.status", lambda: manager.status(txid, participants), True)
        return {"outcome": outcome}
