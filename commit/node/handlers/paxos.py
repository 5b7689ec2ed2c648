"""Paxos Commit's messages (Gray & Lamport 2006, section 4): acceptors, the leader, fast participants.

    paxos.phase2a  {txid, shard, value, reason?, participants, leader, hop} -> {}   acceptor, ballot 0
    paxos.phase2b  {txid, acceptor, ballot, values, reasons?, hop}           -> {}   leader
    paxos.learn    {txid, shard, acceptor, ballot, values, participants, hop} -> {outcome}   fast participant
    paxos.phase1a  {txid, ballot, participants, instances} -> {promised, accepted, promise}   acceptor
    paxos.accept   {txid, ballot, values}                  -> {accepted}                     acceptor
    paxos.forget   {leader, finished: [[txid, participants]...]} -> {}   acceptor, from the leader
    paxos.learned  {learned: [[txid, shard, participants]...]} -> {}      acceptor, from a fast participant

Ballot 0 belongs to the participants (they are its only proposers), so
``paxos.accept`` refuses it, and ``paxos.phase2b`` and ``paxos.learn`` (an
acceptor's bundle of ballot-0 votes) take nothing else. ``paxos.phase1a`` and
``paxos.accept`` take only a ballot a leader can have made by now
(``consensus.paxos.unissued``): one of a later term would outrank every real
leader's, and the instance would never be recovered. A phase 1a about instances
the acceptor forgot is answered ``forgotten`` (``consensus.acceptor``). ``paxos.forget``
comes only from a coordinator-group node, and names transactions whose every
participant acknowledged the outcome (the leader's word); ``paxos.learned`` only
from a replica of each shard it names, which applied the outcome it learned. Every message takes only
txids of a protocol with acceptors (``commit.protocols.registry.TXID_METHODS``).
"""

from __future__ import annotations

from typing import Any

import trio

from commit.config import COORDINATOR_GROUP
from commit.node.handlers.base import Handler, Handlers, NodeParts
from commit.node.handlers.params import ballot, hop_of, one_of
from commit.outcomes import ABORTED, PREPARED
from commit.protocols.paxos_commit import Phase2b
from commit.txids import protocol_of
from consensus.errors import InvalidRequest
from consensus.paxos import BALLOT_ZERO, Ballot, unissued


class PaxosMessages(Handlers):
    def __init__(self, node: NodeParts) -> None:
        super().__init__(node)
        node.paxos.deliver_local = self._deliver_phase2b

    def methods(self) -> dict[str, Handler]:
        return {
            "paxos.phase2a": self.phase2a,
            "paxos.phase2b": self.phase2b,
            "paxos.learn": self.learn,
            "paxos.phase1a": self.phase1a,
            "paxos.accept": self.accept,
            "paxos.forget": self.forget,
            "paxos.learned": self.learned,
        }

    def _acceptor_here(self) -> None:
        if self.node.paxos.acceptor is None:
            raise InvalidRequest(f"node {self.node.node_id} is not an acceptor (not in the coordinator group)")

    def _acceptor_id(self, raw: Any) -> str:
        if raw not in self.node.paxos.acceptor_ids:
            raise InvalidRequest(f"{raw!r:.40} is not an acceptor")
        return raw

    def _recovery_ballot(self, raw: Any) -> Ballot:
        """A leader's ballot above 0 that a leader can have made by now, as this acceptor knows the group."""
        their_ballot = ballot(raw)
        group = self.node.groups[COORDINATOR_GROUP]
        ranks = self.node.paxos.acceptor_ids
        leader = group.leader_id()
        why = unissued(their_ballot, group.term(), ranks.index(leader) if leader in ranks else None, len(ranks))
        if why is not None:
            raise InvalidRequest(why)
        self.sent_by(ranks[their_ballot[1]], f"the leader of ballot {list(their_ballot)}")  # its rank is its sender's
        return their_ballot

    def _ballot_zero(self, raw: Any) -> None:
        if ballot(raw) != BALLOT_ZERO:
            raise InvalidRequest("a bundle of participants' votes is at ballot 0")

    async def phase2a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = self.check.txid(params, "paxos.phase2a")
        shard = self.check.shard_name(params.get("shard"))
        value = one_of(params.get("value"), (PREPARED, ABORTED), "value")
        reason = self.check.reason(params.get("reason", "")) if value == ABORTED else ""
        participants = self.check.participants_of(txid, params.get("participants"))
        if shard not in participants:
            raise InvalidRequest(f"{shard} is not among the participants")
        self.sent_by_shard_replica(shard, "the ballot-0 vote")
        leader = self.check.node_id(params.get("leader"), "leader")
        fast = protocol_of(txid).fast  # the txid's own protocol says whether the participants learn too
        await self.node.paxos.on_phase2a(txid, shard, value, reason, participants, leader, fast, hop_of(params))
        return {}

    async def phase2b(self, params: dict[str, Any]) -> dict[str, Any]:
        txid = self.check.txid(params, "paxos.phase2b")
        acceptor = self.sent_by(self._acceptor_id(params.get("acceptor")), "acceptor")
        self._ballot_zero(params.get("ballot"))
        values = self.check.votes(params.get("values"), "values")
        raw_reasons = params.get("reasons", {})
        if not isinstance(raw_reasons, dict):
            raise InvalidRequest("reasons must map shard names to strings")
        reasons = {self.check.shard_name(k): self.check.reason(v)
                   for k, v in raw_reasons.items() if values.get(k) == ABORTED}
        self.manager(txid)  # only the coordinator group's leader takes 2b messages
        self._deliver_phase2b(txid, acceptor, BALLOT_ZERO, values, hop_of(params), reasons)
        return {}

    def _deliver_phase2b(self, txid: str, acceptor: str, ballot: Ballot, values: dict[str, str], hop: int,
                         reasons: dict[str, str]) -> None:
        manager = self.node.managers.get(protocol_of(txid).name)
        if manager is not None:
            manager.deliver(txid, Phase2b(now=trio.current_time(), acceptor=acceptor, ballot=ballot, values=values),
                            hop, reasons)

    async def learn(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self.participant(params, "paxos.learn")
        acceptor = self.sent_by(self._acceptor_id(params.get("acceptor")), "acceptor")
        self._ballot_zero(params.get("ballot"))
        values = self.check.votes(params.get("values"), "values")
        participants = self.check.participants_of(txid, params.get("participants"))
        outcome = await self.within_request_timeout(
            "paxos.learn", lambda: self.node.paxos.on_learn(txid, group.name, acceptor, values, participants), True)
        return {"outcome": outcome}

    async def phase1a(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = self.check.txid(params, "paxos.phase1a")
        their_ballot = self._recovery_ballot(params.get("ballot"))
        participants = self.check.participants_of(txid, params.get("participants"))
        instances = self.check.shards(params.get("instances"), "instances")
        if not set(instances) <= set(participants):
            raise InvalidRequest(f"instances {instances} are not all participants of {txid}")
        return await self.node.paxos.on_phase1a(txid, their_ballot, instances)

    async def accept(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        txid = self.check.txid(params, "paxos.accept")
        their_ballot = self._recovery_ballot(params.get("ballot"))
        return await self.node.paxos.on_accept(txid, their_ballot, self.check.votes(params.get("values"), "values"))

    async def forget(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        self.sent_by(self._acceptor_id(params.get("leader")), "leader")
        finished = [(txid, self.check.participants_of(txid, participants))
                    for txid, (participants,) in self._batch(params, "finished", "paxos.forget", "participants")]
        await self.node.paxos.on_forget(finished)
        return {}

    async def learned(self, params: dict[str, Any]) -> dict[str, Any]:
        self._acceptor_here()
        learned = []
        for txid, (raw_shard, raw_participants) in self._batch(params, "learned", "paxos.learned",
                                                               "shard", "participants"):
            shard = self.check.shard_name(raw_shard)
            participants = self.check.participants_of(txid, raw_participants)
            if shard not in participants:
                raise InvalidRequest(f"{shard} is not among the participants of {txid}")
            self.sent_by_shard_replica(shard, "an acknowledgement")
            learned.append((txid, shard, participants))
        await self.node.paxos.on_learned(learned)
        return {}

    def _batch(self, params: dict[str, Any], key: str, method: str, *fields: str) -> list[tuple[str, list[Any]]]:
        """``params[key]``: at most ``limits.max_forget_batch`` entries ``[txid, *fields]``, each txid of a
        protocol that sends ``method``; ``(txid, the fields)`` of each."""
        raw, limit = params.get(key), self.node.config.limits.max_forget_batch
        shape = f"[txid, {', '.join(fields)}]"
        if not isinstance(raw, list) or len(raw) > limit:
            raise InvalidRequest(f"{key} must be a list of at most {limit} {shape} entries")
        entries = []
        for entry in raw:
            if not isinstance(entry, list) or len(entry) != 1 + len(fields):
                raise InvalidRequest(f"{key} must hold {shape} entries")
            entries.append((self.check.txid({"txid": entry[0]}, method), entry[1:]))
        return entries
