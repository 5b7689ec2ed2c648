"""A shard leader's side of atomic commit: votes, decisions, fencing, and 3PC's state moves.

    shard.prepare  {txid, shard, reads, writes, participants, leader, hop} -> {vote, reason?}
                                       vote: yes, no, or forgotten (no vote: too old for this shard)
    shard.query    {txid, shard}                 -> {state}   fences unknown txids
    shard.decide   {txid, shard, outcome}        -> {state}   not_prepared: never prepared here (now fenced)
                                                             state "forgotten": decided here long ago (an ack)
    shard.inspect  {txid, shard}                 -> {state, phase, promised}   read-only (no fencing)
    3pc.join       {txid, shard, round, leader, hop}         -> {state, promised}   3PC state request
    3pc.move       {txid, shard, round, target, leader, hop} -> {state, promised}   PreCommit / PreAbort

Everything a shard decides goes through its Raft log (``ShardState``); these
methods only check the request and trace the messages the vote implies. A txid
older than what the shard remembers (``ShardState``, "forget") gets no vote: its
PREPARE is answered ``forgotten``, which stops its coordinator without a decision
(``commit.node.peers.Peers.prepare``), and no ballot-0 2a leaves, since the shard
may have voted long ago; a 3PC termination message about it is refused, which leaves this
participant out of the round, as a silent one would be.
"""

from __future__ import annotations

from typing import Any

from commit.node.handlers.base import Handler, Handlers, shard_state
from commit.node.handlers.params import hop_of, one_of, round_of
from commit.outcomes import ABORTED, COMMITTED, FORGOTTEN, PREPARED, UNKNOWN
from commit.protocols.mutants import Mutant
from commit.protocols.three_phase import PREABORTED, PRECOMMITTED, Round
from commit.txids import protocol_of
from consensus.errors import InvalidRequest, NotPrepared, Unavailable
from consensus.group import ReplicaGroup


class Participants(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {
            "shard.prepare": self.prepare,
            "shard.query": self.query,
            "shard.decide": self.decide,
            "shard.inspect": self.inspect,
            "3pc.join": self.three_phase_join,
            "3pc.move": self.three_phase_move,
        }

    async def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self.participant(params, "shard.prepare")
        reads, writes = self.check.payload(params, group.name)
        spec = protocol_of(txid)
        participants = self.check.participants_of(txid, params.get("participants"))
        leader = self.sent_by(params.get("leader"), "leader")
        hop = hop_of(params)
        if group.name not in participants:
            raise InvalidRequest(f"{group.name} is not among the participants {participants}")
        if self.config.transactions.mutant == Mutant.SKIP_PREPARE_PERSIST.value:
            vote: Any = "yes"  # the mutant: a yes vote with no Raft entry and no lock behind it
        else:
            vote = await self.propose(group, ("prepare", txid, reads, writes, participants))
        if isinstance(vote, tuple) and vote[0] == FORGOTTEN:
            return {"vote": FORGOTTEN, "reason": vote[1]}
        decided = isinstance(vote, tuple) and vote[0] == "decided"
        if decided:
            vote = "yes" if vote[1] == COMMITTED else ("no", f"{txid} is already {vote[1]} here")
        else:
            self.node.tracer.forced(txid, "shard prepare")
        reason = "" if vote == "yes" else vote[1]
        if spec.acceptors:
            if not decided:  # a decided participant already cast its one ballot-0 vote
                value = PREPARED if vote == "yes" else ABORTED
                self.node.paxos.nursery.start_soon(self._send_vote, txid, group.name, value, reason, participants,
                                                   leader, spec.fast, hop + 1)
        else:
            self.node.tracer.sent(txid, "vote", leader, hop + 1)
        if vote == "yes":
            return {"vote": "yes"}
        return {"vote": "no", "reason": reason}

    async def _send_vote(self, txid: str, shard: str, value: str, reason: str, participants: tuple[str, ...],
                         leader: str, fast: bool, hop: int) -> None:
        await self.node.hooks.checkpoint("participant.before_2a", txid)
        self.node.paxos.send_vote(txid, shard, value, reason, participants, leader, fast, hop)

    async def query(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group = self.participant(params, "shard.query")
        return {"state": await self.propose(group, ("refuse", txid))}

    async def decide(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply a decision; ``not_prepared`` if this shard has no record of txid (``ShardState``: it fenced it)."""
        txid, group = self.participant(params, "shard.decide")
        outcome = one_of(params.get("outcome"), (COMMITTED, ABORTED), "outcome")
        state = await self.propose(group, ("commit" if outcome == COMMITTED else "abort", txid))
        if state == UNKNOWN:
            raise NotPrepared(f"{group.name} never prepared {txid}: {outcome} refused, and {txid} is fenced here "
                              f"(a PREPARE for it votes no)")
        return {"state": state}

    async def inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        """What the shard holds for txid, without fencing it: for demonstrations and operators."""
        txid, group = self.participant(params, "shard.inspect")
        await self.within_request_timeout(group.name, group.read_barrier, False)
        machine = shard_state(group)
        prepared = machine.prepared.get(txid)
        if prepared is not None and protocol_of(txid).participants_terminate:
            return {"state": PREPARED, "phase": prepared.phase, "promised": list(prepared.promised)}
        if prepared is not None:
            return {"state": PREPARED, "phase": None, "promised": None}
        return {"state": machine.state_of(txid) or UNKNOWN, "phase": None, "promised": None}

    def _three_phase(self, params: dict[str, Any], method: str) -> tuple[str, ReplicaGroup, Round, str, int]:
        txid, group = self.participant(params, method)
        leader = self.sent_by(params.get("leader"), "leader")
        return txid, group, round_of(params.get("round")), leader, hop_of(params)

    @staticmethod
    def _known(txid: str, state: str) -> str:
        if state == FORGOTTEN:
            raise Unavailable(f"{txid} is older than anything this shard remembers: it takes no part in its "
                              f"termination", maybe_applied=False)
        return state

    async def three_phase_join(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group, round_, leader, hop = self._three_phase(params, "3pc.join")
        state, promised = await self.propose(group, ("3pc_join", txid, round_))
        state = self._known(txid, state)
        self.node.tracer.sent(txid, "state", leader, hop + 1)
        return {"state": state, "promised": list(promised)}

    async def three_phase_move(self, params: dict[str, Any]) -> dict[str, Any]:
        txid, group, round_, leader, hop = self._three_phase(params, "3pc.move")
        target = one_of(params.get("target"), (PRECOMMITTED, PREABORTED), "target")
        state, promised = await self.propose(group, ("3pc_move", txid, round_, target))
        state = self._known(txid, state)
        if state == target:
            self.node.tracer.forced(txid, f"shard {target}")
        self.node.tracer.sent(txid, "ack", leader, hop + 1)
        return {"state": state, "promised": list(promised)}
