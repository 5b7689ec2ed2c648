"""Paxos Commit's messages (Gray & Lamport 2006, section 4): acceptors, the leader, fast participants.

    paxos.phase2a  {txid, shard, value, reason?, participants, leader, fast, hop} -> {}   acceptor, ballot 0
    paxos.phase2b  {txid, acceptor, ballot, values, reasons?, hop}           -> {}   leader
    paxos.learn    {txid, shard, acceptor, ballot, values, participants, hop} -> {outcome}   fast participant
    paxos.phase1a  {txid, ballot, participants, instances} -> {promised, accepted, promise}   acceptor
    paxos.accept   {txid, ballot, values}                  -> {accepted}                     acceptor

Ballot 0 belongs to the participants (they are its only proposers), so
``paxos.accept`` refuses it and ``paxos.learn`` takes nothing else.
"""

from __future__ import annotations

from typing import Any

import trio

from commit.node.handlers.base import Handler, Handlers, NodeParts
from commit.node.handlers.params import ballot, hop_of, one_of
from commit.outcomes import ABORTED, PREPARED
from commit.protocols.paxos_commit import Phase2b
from commit.txids import check_txid, protocol_of
from consensus.errors import InvalidRequest
from consensus.paxos import BALLOT_ZERO, Ballot


class PaxosMessages(Handlers):
    def __init__(self, node: NodeParts) -> None:
        super().__init__(node)
        node.paxos.deliver_local = self._deliver_phase2b

    def routes(self) -> dict[str, Handler]:
        return {
            "paxos.phase2a": self.phase2a,
            "paxos.phase2b": self.phase2b,
            "paxos.learn": self.learn,
            "paxos.phase1a": self.phase1a,
            "paxos.accept": self.accept,
        }

    def _acceptor_here(self) -> None:
        if self.node.paxos.acceptor is None:
            raise InvalidRequest(f"node {self.node.node_id} is not an acceptor (not in the coordinator group)")

    def _acceptor_id(self, raw: Any) -> str:
        if raw not in self.node.paxos.acceptor_ids:
            raise InvalidRequest(f"{raw!r:.40} is not an acceptor")
        return raw

    async def phase2a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        shard = self.check.shard_name(params.get("shard"))
        value = one_of(params.get("value"), (PREPARED, ABORTED), "value")
        reason = self.check.reason(params.get("reason", "")) if value == ABORTED else ""
        participants = self.check.participants_of(txid, params.get("participants"))
        if shard not in participants:
            raise InvalidRequest(f"{shard} is not among the participants")
        leader = self.check.node_id(params.get("leader"), "leader")
        fast = params.get("fast") is True
        await self.node.paxos.on_phase2a(txid, shard, value, reason, participants, leader, fast, hop_of(params))
        return {}

    async def phase2b(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = check_txid(params.get("txid"))
        acceptor = self._acceptor_id(params.get("acceptor"))
        their_ballot = ballot(params.get("ballot"))
        values = self.check.votes(params.get("values"), "values")
        raw_reasons = params.get("reasons", {})
        if not isinstance(raw_reasons, dict):
            raise InvalidRequest("reasons must map shard names to strings")
        reasons = {self.check.shard_name(k): self.check.reason(v)
                   for k, v in raw_reasons.items() if values.get(k) == ABORTED}
        self.manager(txid)  # only the coordinator group's leader takes 2b messages
        self._deliver_phase2b(txid, acceptor, their_ballot, values, hop_of(params), reasons)
        return {}

    def _deliver_phase2b(self, txid: str, acceptor: str, ballot: Ballot, values: dict[str, str], hop: int,
                         reasons: dict[str, str]) -> None:
        manager = self.node.managers.get(protocol_of(txid).name)
        if manager is not None:
            manager.deliver(txid, Phase2b(now=trio.current_time(), acceptor=acceptor, ballot=ballot, values=values),
                            hop, reasons)

    async def learn(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self.participant(params)
        acceptor = self._acceptor_id(params.get("acceptor"))
        if ballot(params.get("ballot")) != BALLOT_ZERO:
            raise InvalidRequest("participants learn from ballot-0 bundles only")
        values = self.check.votes(params.get("values"), "values")
        participants = self.check.participants_of(txid, params.get("participants"))
        outcome = await self.within_request_timeout(
            "paxos.learn", lambda: self.node.paxos.on_learn(txid, group.name, acceptor, values, participants), True)
        return {"outcome": outcome}

    async def phase1a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        their_ballot = ballot(params.get("ballot"))
        participants = self.check.participants_of(txid, params.get("participants"))
        instances = self.check.shards(params.get("instances"), "instances")
        if not set(instances) <= set(participants):
            raise InvalidRequest(f"instances {instances} are not all participants of {txid}")
        return await self.node.paxos.on_phase1a(txid, their_ballot, instances)

    async def accept(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = check_txid(params.get("txid"))
        their_ballot = ballot(params.get("ballot"))
        if their_ballot == BALLOT_ZERO:
            raise InvalidRequest("ballot 0 belongs to the participants (paxos.phase2a)")
        return await self.node.paxos.on_accept(txid, their_ballot, self.check.votes(params.get("values"), "values"))
