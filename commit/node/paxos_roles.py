"""Paxos Commit on a node, apart from the leader: the participant's phase 2a, the acceptor, fast learning.

* Participant (a shard leader): once its vote is replicated in its group, it
  sends phase 2a at ballot 0 for its own instance ``(txid, shard)`` to every
  acceptor (``send_vote``); a NO vote carries the shard's reason.
* Acceptor (every coordinator-group node): accepts ballot-0 values as they
  come; once it holds one for every participant of the transaction, it makes
  them durable in one forced write and sends ONE bundled phase 2b to the
  leader (and, for Faster Paxos Commit, to every participant). An "aborted"
  value is forwarded at once, unbundled, with the participant's reason: it
  decides the transaction alone, and the client is told why.
  It also answers the leader's recovery phases 1a and 2a at higher ballots;
  a 1a it refuses is answered with the ballot it promised instead, so that a
  leader of an earlier term learns it has been superseded.
* Fast learner (a shard leader, Faster Paxos Commit): tallies the bundles; once
  every instance has F+1 acceptors at "prepared" (or any at "aborted") it
  applies the outcome to its shard, without waiting for the leader.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Awaitable
from typing import Any

import trio

from commit.outcomes import ABORTED, COMMITTED
from commit.node.peers import Peers
from commit.outcomes import PREPARED
from commit.node.tracing import Tracer
from consensus.acceptor import Acceptor
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup
from consensus.paxos import BALLOT_ZERO, Ballot

log = logging.getLogger(__name__)

MAX_PENDING = 10_000


@dataclass
class _Bundle:
    participants: tuple[str, ...]
    leader: str
    fast: bool
    hop: int
    values: dict[str, str] = field(default_factory=dict)
    sent: bool = False


class PaxosNode:
    def __init__(
        self, node_id: str, acceptor: Acceptor | None, acceptor_ids: tuple[str, ...], peers: Peers,
        tracer: Tracer, shards: dict[str, ReplicaGroup], message_timeout_s: float, nursery: trio.Nursery,
    ) -> None:
        self.node_id = node_id
        self.acceptor = acceptor
        self.acceptor_ids = acceptor_ids
        self.quorum = len(acceptor_ids) // 2 + 1
        self.peers = peers
        self.tracer = tracer
        self.shards = shards
        self.timeout_s = message_timeout_s
        self.nursery = nursery
        self._bundles: OrderedDict[str, _Bundle] = OrderedDict()
        # Set by the node once its leader side exists: hands a 2b to a leader on this same node.
        self.deliver_local: Any = None
        self._tallies: OrderedDict[tuple[str, str], dict[str, dict[str, str]]] = OrderedDict()

    async def _bounded(self, what: str, call: Any) -> Any:
        with trio.move_on_after(self.timeout_s):
            try:
                return await call
            except ClusterError as exc:
                log.info("%s failed: %s", what, exc)
                return None
        log.info("%s timed out", what)
        return None

    # -- participant --------------------------------------------------------------------

    def send_vote(self, txid: str, shard: str, value: str, reason: str, participants: tuple[str, ...],
                  leader: str, fast: bool, hop: int) -> None:
        params = {"txid": txid, "shard": shard, "value": value, "participants": list(participants),
                  "leader": leader, "fast": fast, "hop": hop}
        if value == ABORTED:
            params["reason"] = reason
        for acceptor in self.acceptor_ids:
            self.tracer.sent(txid, "2a", acceptor, hop)
            call: Awaitable[Any]
            if acceptor == self.node_id and self.acceptor is not None:
                call = self.on_phase2a(txid, shard, value, reason, participants, leader, fast, hop)  # no RPC
            else:
                call = self.peers.call_node(acceptor, "paxos.phase2a", params)
            self.nursery.start_soon(self._bounded, f"2a {txid} to {acceptor}", call)

    # -- acceptor -------------------------------------------------------------------------

    async def on_phase2a(self, txid: str, shard: str, value: str, reason: str, participants: tuple[str, ...],
                         leader: str, fast: bool, hop: int) -> None:
        assert self.acceptor is not None
        if not self.acceptor.accept_now((txid, shard), BALLOT_ZERO, value):
            # A recovery ballot got here first: this acceptor promised not to accept ballot 0 any more,
            # and reporting the value as accepted could let a leader count a quorum that never was.
            return
        bundle = self._bundles.get(txid)
        if bundle is None:
            bundle = self._bundles[txid] = _Bundle(participants, leader, fast, hop)
            while len(self._bundles) > MAX_PENDING:
                self._bundles.popitem(last=False)
        bundle.values[shard] = value
        bundle.hop = max(bundle.hop, hop)
        if value == PREPARED and (bundle.sent or set(bundle.values) != set(participants)):
            return
        instances = [(txid, p) for p in (participants if value == PREPARED else (shard,))]
        if await self.acceptor.persist(instances):
            self.tracer.forced(txid, "acceptor accept")
        values = dict(bundle.values) if value == PREPARED else {shard: value}
        if value == PREPARED:
            bundle.sent = True
        self._send_2b(txid, values, {} if value == PREPARED else {shard: reason}, bundle)

    def _send_2b(self, txid: str, values: dict[str, str], reasons: dict[str, str], bundle: _Bundle) -> None:
        assert self.acceptor is not None
        params = {"txid": txid, "acceptor": self.acceptor.name, "ballot": list(BALLOT_ZERO),
                  "values": values, "hop": bundle.hop + 1}
        if reasons:
            params["reasons"] = reasons
        self.tracer.sent(txid, "2b", bundle.leader, bundle.hop + 1)
        if bundle.leader == self.node_id and self.deliver_local is not None:
            self.deliver_local(txid, self.acceptor.name, BALLOT_ZERO, values, bundle.hop + 1, reasons)
        else:
            self.nursery.start_soon(self._bounded, f"2b {txid} to {bundle.leader}",
                                    self.peers.call_node(bundle.leader, "paxos.phase2b", params))
        if bundle.fast:
            for shard in bundle.participants:
                group = self.shards.get(shard)
                call: Awaitable[Any]
                if group is not None and group.is_leader():  # this node leads that participant: no RPC
                    self.tracer.sent(txid, "2b", self.node_id, bundle.hop + 1)
                    call = self.on_learn(txid, shard, self.acceptor.name, values, bundle.participants)
                else:
                    learn = {**params, "shard": shard, "participants": list(bundle.participants)}
                    call = self.peers.call_group_traced(shard, "paxos.learn", learn, "2b", bundle.hop + 1)
                self.nursery.start_soon(self._bounded, f"2b {txid} to {shard}", call)

    async def on_phase1a(self, txid: str, ballot: Ballot, instances: tuple[str, ...]) -> dict[str, Any]:
        assert self.acceptor is not None
        promised, accepted, promise = await self.acceptor.promise(ballot, [(txid, p) for p in instances])
        self.tracer.forced(txid, "acceptor promise")
        return {"promised": promised,
                "accepted": [[p, list(b) if b is not None else None, v] for (_, p), (b, v) in accepted.items()],
                "promise": None if promised else list(promise)}

    async def on_accept(self, txid: str, ballot: Ballot, values: dict[str, str]) -> dict[str, Any]:
        assert self.acceptor is not None
        accepted = await self.acceptor.accept(ballot, {(txid, p): v for p, v in values.items()})
        self.tracer.forced(txid, "acceptor accept")
        return {"accepted": {p: v for (_, p), v in accepted.items()}}

    # -- fast learner ---------------------------------------------------------------------

    async def on_learn(self, txid: str, shard: str, acceptor: str, values: dict[str, str],
                       participants: tuple[str, ...] | None) -> str | None:
        """Tally an acceptor's bundle at a participant; apply the outcome once it is known."""
        tally = self._tallies.setdefault((txid, shard), {})
        while len(self._tallies) > MAX_PENDING:
            self._tallies.popitem(last=False)
        tally[acceptor] = values
        seen = {p for v in tally.values() for p in v}
        if any(v == ABORTED for bundle in tally.values() for v in bundle.values()):
            outcome = ABORTED
        elif participants is not None and all(
            sum(1 for b in tally.values() if b.get(p) == PREPARED) >= self.quorum for p in participants
        ) and seen >= set(participants):
            outcome = COMMITTED
        else:
            return None
        group = self.shards[shard]
        await group.propose(("commit" if outcome == COMMITTED else "abort", txid))
        self._tallies.pop((txid, shard), None)
        return outcome
