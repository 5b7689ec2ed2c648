"""Paxos Commit on a node, apart from the leader: the participant's phase 2a, the acceptor, fast learning.

The rules are sans-IO cores (``commit.protocols.paxos_participant``: ``AcceptorBundles``,
``FastLearner``); this module feeds them and carries their effects out through the driver's table
(``commit.node.driver.EXECUTORS``):

* Participant (a shard leader): once its vote is replicated in its group, it sends phase 2a at ballot 0
  for its own instance ``(txid, shard)`` to every acceptor (``send_vote``); a NO vote carries the shard's
  reason.
* Acceptor (every coordinator-group node): ``AcceptorBundles`` decides when to persist and what 2b to
  send. It also answers the leader's recovery phases 1a and 2a at higher ballots; a 1a it refuses is
  answered with the ballot it promised instead, so that a leader of an earlier term learns it has been
  superseded.
* Forgetting: the leader tells every acceptor, in batches, which transactions every participant
  acknowledged (``paxos.forget``); under Faster Paxos Commit, whose leader hears no acknowledgement, each
  participant that applied an outcome it learned tells every acceptor itself (``paxos.learned``). Only
  transactions every participant has are forgotten (``consensus.acceptor``).
* Fast learner (a shard leader, Faster Paxos Commit): ``FastLearner`` tallies the bundles; once it knows
  the outcome the shard applies it, without waiting for the leader.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import trio

from commit.node.driver import calls_of, carry_out
from commit.node.peers import Peers
from commit.node.tracing import Tracer
from commit.outcomes import ABORTED, COMMITTED
from commit.protocols.paxos_participant import AcceptorBundles, FastLearner, PersistAcceptances, Send2b, SendLearn, Vote2a
from consensus.acceptor import Acceptor
from consensus.bounded import BoundedTable
from consensus.errors import ClusterError
from consensus.group import ReplicaGroup
from consensus.horizon import Forgotten
from consensus.paxos import BALLOT_ZERO, Ballot

log = logging.getLogger(__name__)


class PaxosNode:
    def __init__(
        self, node_id: str, acceptor: Acceptor | None, acceptor_ids: tuple[str, ...], peers: Peers,
        tracer: Tracer, shards: dict[str, ReplicaGroup], message_timeout_s: float, nursery: trio.Nursery,
        max_pending: int,
    ) -> None:
        self.node_id = node_id
        self.acceptor = acceptor
        self.acceptor_ids = acceptor_ids
        self.peers = peers
        self.tracer = tracer
        self.shards = shards
        self.timeout_s = message_timeout_s
        self.nursery = nursery
        self.bundles = AcceptorBundles(max_pending)
        self.learner = FastLearner(len(acceptor_ids) // 2 + 1, max_pending)
        self.learned: list[tuple[str, str, tuple[str, ...]]] = []  # participant: outcomes applied, to tell
        self.learning: BoundedTable[str, set[str]] = BoundedTable(max_pending)  # acceptor: who told, per txid
        # Set by the node once its leader side exists: hands a 2b to a leader on this same node.
        self.deliver_local: Any = None

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
                  "leader": leader, "hop": hop}
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
        vote = Vote2a(txid=txid, shard=shard, value=value, reason=reason, participants=participants, leader=leader,
                      fast=fast, hop=hop, accepted=self.acceptor.accept_now((txid, shard), BALLOT_ZERO, value))
        await carry_out(calls_of(self.bundles.on_2a(vote)), self, None)

    async def persist_acceptances(self, _: None, effect: PersistAcceptances) -> None:
        assert self.acceptor is not None
        if await self.acceptor.persist([(effect.txid, p) for p in effect.participants]):
            self.tracer.forced(effect.txid, "acceptor accept")

    def _2b_params(self, txid: str, values: dict[str, str], reasons: dict[str, str], hop: int) -> dict[str, Any]:
        assert self.acceptor is not None
        params = {"txid": txid, "acceptor": self.acceptor.name, "ballot": list(BALLOT_ZERO), "values": values,
                  "hop": hop}
        if reasons:
            params["reasons"] = reasons
        return params

    async def send_2b(self, _: None, effect: Send2b) -> None:
        assert self.acceptor is not None
        self.tracer.sent(effect.txid, "2b", effect.leader, effect.hop)
        if effect.leader == self.node_id and self.deliver_local is not None:
            self.deliver_local(effect.txid, self.acceptor.name, BALLOT_ZERO, effect.values, effect.hop, effect.reasons)
            return
        params = self._2b_params(effect.txid, effect.values, effect.reasons, effect.hop)
        self.nursery.start_soon(self._bounded, f"2b {effect.txid} to {effect.leader}",
                                self.peers.call_node(effect.leader, "paxos.phase2b", params))

    async def send_learn(self, _: None, effect: SendLearn) -> None:
        assert self.acceptor is not None
        group = self.shards.get(effect.shard)
        call: Awaitable[Any]
        if group is not None and group.is_leader():  # this node leads that participant: no RPC
            self.tracer.sent(effect.txid, "2b", self.node_id, effect.hop)
            call = self.on_learn(effect.txid, effect.shard, self.acceptor.name, effect.values, effect.participants)
        else:
            learn = {**self._2b_params(effect.txid, effect.values, {}, effect.hop), "shard": effect.shard,
                     "participants": list(effect.participants)}
            call = self.peers.call_group_traced(effect.shard, "paxos.learn", learn, "2b", effect.hop)
        self.nursery.start_soon(self._bounded, f"2b {effect.txid} to {effect.shard}", call)

    async def on_phase1a(self, txid: str, ballot: Ballot, instances: tuple[str, ...]) -> dict[str, Any]:
        assert self.acceptor is not None
        try:
            promised, accepted, promise = await self.acceptor.promise(ballot, [(txid, p) for p in instances])
        except Forgotten as exc:
            log.info("%s: phase 1a refused: %s", txid, exc)
            return {"promised": False, "accepted": [], "promise": None, "forgotten": True}
        self.tracer.forced(txid, "acceptor promise")
        return {"promised": promised,
                "accepted": [[p, list(b) if b is not None else None, v] for (_, p), (b, v) in accepted.items()],
                "promise": None if promised else list(promise)}

    async def on_accept(self, txid: str, ballot: Ballot, values: dict[str, str]) -> dict[str, Any]:
        assert self.acceptor is not None
        accepted = await self.acceptor.accept(ballot, {(txid, p): v for p, v in values.items()})
        self.tracer.forced(txid, "acceptor accept")
        return {"accepted": {p: v for (_, p), v in accepted.items()}}

    async def on_forget(self, finished: list[tuple[str, tuple[str, ...]]]) -> None:
        """The leader's word that every participant of these transactions acknowledged the outcome: their
        instances may be forgotten once older than the horizon (``consensus.acceptor``), their bundles now."""
        assert self.acceptor is not None
        for txid, _ in finished:
            self.bundles.forget(txid)
        await self.acceptor.finish([(txid, p) for txid, participants in finished for p in participants])

    async def on_learned(self, learned: list[tuple[str, str, tuple[str, ...]]]) -> None:
        """Faster Paxos Commit's acknowledgements: each participant that applied an outcome it learned says
        so (its leader hears none); once every participant of a transaction has, it is finished here."""
        done = []
        for txid, shard, participants in learned:
            shards = self.learning.get(txid)
            if shards is None:
                shards = self.learning.remember(txid, set())
            shards.add(shard)
            if shards >= set(participants):
                del self.learning[txid]
                done.append((txid, participants))
        if done:
            await self.on_forget(done)

    # -- fast learner ---------------------------------------------------------------------

    async def on_learn(self, txid: str, shard: str, acceptor: str, values: dict[str, str],
                       participants: tuple[str, ...]) -> str | None:
        """Tally an acceptor's bundle at a participant; apply the outcome once it is known."""
        outcome = self.learner.on_2b(txid, shard, acceptor, values, participants)
        if outcome is not None:
            await self.shards[shard].propose(("commit" if outcome == COMMITTED else "abort", txid))
            self.learned.append((txid, shard, participants))  # told to the acceptors (paxos.learned)
        return outcome
