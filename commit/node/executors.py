"""How a node carries out a coordinator core's effects: one executor per name in ``driver.EXECUTORS``.

Network and disk effects start a task in the run's nursery (``run.tasks``) whose result comes back to
the core as its next event (``run.feed``); every wait is bounded (a vote by ``vote_timeout_s``, a decision
message by ``decision_resend_s``, a store write by ``timeouts.request_s``). An executor returns once what
must come first has happened: ``reply`` and ``persist_decision`` are where a test hold point freezes a
coordinator (``commit.node.hooks``), so nothing after them leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from commit.node.driver import Failed
from commit.outcomes import FORGOTTEN
from commit.protocols import paxos_commit as pc
from commit.protocols import three_phase as three
from commit.protocols import two_phase as tp
from commit.protocols.events import Acked, Finished, Reply, SendDecision, SendPrepare, Vote
from consensus.errors import ClusterError, NotPrepared, Unavailable
from consensus.horizon import Forgotten
from consensus.paxos import ballot_of

if TYPE_CHECKING:
    from commit.node.transaction_manager import ActiveTxn, TransactionManager

log = logging.getLogger(__name__)


class HandedOver(Unavailable):
    """This node stopped driving a transaction that another coordinator-group leader owns now."""


def _remembered(txid: str, outcome: Any) -> Any:
    """The store's answer; ``Forgotten`` (this coordinator stops, deciding nothing) if it forgot txid."""
    if outcome == FORGOTTEN:
        raise Forgotten(f"{txid} is older than anything the decision store remembers: not run again",
                        maybe_applied=True)
    return outcome


class NodeExecutors:
    """The executors of one ``TransactionManager``'s runs (``driver.drive`` calls them by name)."""

    def __init__(self, manager: TransactionManager) -> None:
        self.m = manager

    # -- the decision store ----------------------------------------------------------------------

    async def persist_begin(self, run: ActiveTxn, effect: tp.PersistBegin) -> None:
        store = self.m.store
        assert store is not None and run.tasks is not None

        async def begin() -> None:
            outcome = await self._durably("begin", run.txid, lambda: store.begin(run.txid, effect.participants))
            _remembered(run.txid, outcome)
            run.feed(tp.Persisted(now=trio.current_time(), outcome=outcome))

        run.tasks.start_soon(begin)

    async def persist_decision(self, run: ActiveTxn, effect: tp.PersistDecision) -> None:
        store = self.m.store
        assert store is not None and run.tasks is not None
        participants = run.core.participants

        async def decide() -> None:
            await self.m.hooks.checkpoint("coordinator.after_votes", run.txid)
            final = await self._durably("decision", run.txid,
                                        lambda: store.decide(run.txid, effect.outcome, participants))
            _remembered(run.txid, final)
            await self.m.hooks.checkpoint("coordinator.after_decision", run.txid)
            run.feed(tp.Persisted(now=trio.current_time(), outcome=final))

        run.tasks.start_soon(decide)

    async def finished(self, run: ActiveTxn, effect: Finished) -> None:
        store = self.m.store
        if self.m.paxos is not None and run.core.participants_acked:
            self.m.acknowledged.append((run.txid, run.core.participants))  # the acceptors may forget it
        if store is None:
            return
        assert run.tasks is not None

        async def finish() -> None:
            try:
                await self._durably("finish record", run.txid, lambda: store.finish(run.txid), forced=False)
            except ClusterError as exc:
                log.info("%s: finish record not written (a later leader will): %s", run.txid, exc)

        run.tasks.start_soon(finish)

    async def _durably(self, what: str, txid: str, write: Callable[[], Awaitable[Any]], forced: bool = True) -> Any:
        """A store write within ``persist_timeout_s``; failing it stops this coordinator (never guesses).

        ``forced``: a message waits for this write (begin, decision), so it counts as a forced write; the
        finish record is written lazily and does not.
        """
        timeout_s = self.m.persist_timeout_s
        with trio.move_on_after(timeout_s):
            result = await write()
            if forced:
                self.m.tracer.forced(txid, f"{self.m.protocol} {what}")
            return result
        raise Unavailable(f"{txid}: {what} not durable within {timeout_s}s", maybe_applied=True)

    # -- participants --------------------------------------------------------------------------

    async def send_prepare(self, run: ActiveTxn, effect: SendPrepare) -> None:
        assert run.tasks is not None
        run.tasks.start_soon(self._prepare, run, effect.participant)

    async def _prepare(self, run: ActiveTxn, shard: str) -> None:
        payload = run.payloads.get(shard) if run.payloads is not None else None
        with trio.move_on_after(self.m.vote_timeout_s):
            try:
                yes, reason = await self.m.peers.prepare(shard, run.txid, payload, self._meta(run))
            except Forgotten:
                raise  # the shard may have voted and committed it long ago: this run stops, deciding nothing
            except ClusterError as exc:
                log.info("%s: no vote from %s: %s", run.txid, shard, exc)
                return
            if not yes:
                run.why[shard] = reason
            if self.m.paxos is not None:
                return  # the vote travels to the acceptors as phase 2a, and reaches us as 2b
            run.hop = max(run.hop, 3)
            run.feed(Vote(now=trio.current_time(), participant=shard, yes=yes))

    def _meta(self, run: ActiveTxn) -> dict[str, Any]:
        return {"leader": self.m.node_id, "hop": run.hop + 1, "protocol": self.m.protocol,
                "participants": list(run.core.participants)}

    async def send_decision(self, run: ActiveTxn, effect: SendDecision) -> None:
        assert run.tasks is not None
        run.tasks.start_soon(self._decide, run, effect.participant, effect.outcome)

    async def _decide(self, run: ActiveTxn, shard: str, outcome: str) -> None:
        """One decision message; acknowledged by the shard's answer, or by its ``not_prepared``.

        Only a commit gets ``not_prepared`` (an abort of a txid a shard never prepared is presumed abort's
        own case: the shard records it aborted and acknowledges). A shard that never prepared txid can be
        sent a commit only if the decision is no real one (every participant voted YES before any commit
        was decided); nothing is left for it to apply, and it has fenced txid (a later PREPARE votes NO),
        so the decision is not sent again. A shard that decided txid and forgot it since answers
        ``forgotten``, an acknowledgement too: it forgets only what it decided, or what no one can
        prepare there any more. Any other error is retried at the next resend.
        """
        with trio.move_on_after(self.m.resend_s):
            try:
                await self.m.peers.decide(shard, run.txid, outcome, run.hop + 1)
            except NotPrepared as exc:
                log.warning("%s: %s refused by %s, which never prepared it: %s", run.txid, outcome, shard, exc)
            except ClusterError as exc:
                log.info("%s: %s not acknowledged by %s: %s", run.txid, outcome, shard, exc)
                return
            run.feed(Acked(now=trio.current_time(), participant=shard))

    # -- 3PC -----------------------------------------------------------------------------------

    async def send_move(self, run: ActiveTxn, effect: three.SendMove) -> None:
        assert run.tasks is not None
        call = partial(self._three_phase_call, run, effect.participant, "3pc.move", effect.round, effect.target)
        if effect.round == three.COORDINATOR_ROUND:  # the coordinator's PreCommit
            await self.m.hooks.checkpoint("coordinator.after_votes", run.txid)
            if self.m.hooks.armed_at("coordinator.after_one_precommit"):
                await call()
                await self.m.hooks.checkpoint("coordinator.after_one_precommit", run.txid)
        run.tasks.start_soon(call)

    async def send_join(self, run: ActiveTxn, effect: three.SendJoin) -> None:
        assert run.tasks is not None
        run.tasks.start_soon(self._three_phase_call, run, effect.participant, "3pc.join", effect.round, None)

    async def gave_up(self, run: ActiveTxn, effect: three.GaveUp) -> None:
        log.info("%s: termination gave up: %s", run.txid, effect.reason)

    async def _three_phase_call(self, run: ActiveTxn, shard: str, method: str, round_: three.Round,
                                target: str | None) -> None:
        """A PreCommit or termination message to one participant; its state comes back as a StateReport."""
        params: dict[str, Any] = {"txid": run.txid, "shard": shard, "round": list(round_), "leader": self.m.node_id}
        if target is not None:
            params["target"] = target
        kind = {"3pc.join": "state-request", three.PRECOMMITTED: "precommit", three.PREABORTED: "preabort"}
        hop = run.hop + 1
        params["hop"] = hop
        with trio.move_on_after(self.m.vote_timeout_s):
            try:
                reply = await self.m.peers.call_group_traced(shard, method, params, kind[target or method], hop)
            except ClusterError as exc:
                log.info("%s: %s to %s failed: %s", run.txid, method, shard, exc)
                return
            run.hop = max(run.hop, hop + 1)
            run.feed(three.StateReport(now=trio.current_time(), participant=shard, state=reply["state"],
                                       promised=(reply["promised"][0], reply["promised"][1])))

    # -- Paxos Commit recovery -----------------------------------------------------------------

    def _acceptors_if_leading(self, run: ActiveTxn) -> tuple[str, ...]:
        """The acceptors to send a recovery ballot to; HandedOver if this node no longer leads its term."""
        paxos = self.m.paxos
        assert paxos is not None
        if not paxos.leads_in(run.term):
            raise HandedOver(f"this node no longer leads the coordinator group in term {run.term}; "
                             f"the current leader finishes the transaction")
        return paxos.acceptors

    async def phase1a(self, run: ActiveTxn, effect: pc.Phase1a) -> None:
        assert run.tasks is not None
        params = {"ballot": list(effect.ballot), "participants": list(run.core.participants),
                  "instances": list(effect.participants)}
        for acceptor in self._acceptors_if_leading(run):
            run.tasks.start_soon(self._phase1a, run, acceptor, effect.ballot, params)

    async def _phase1a(self, run: ActiveTxn, acceptor: str, ballot: Any, params: dict[str, Any]) -> None:
        reply = await self._ask_acceptor(run, acceptor, "1a", "paxos.phase1a", params)
        if reply is not None:
            accepted = {p: (ballot_of(b) if b is not None else None, v) for p, b, v in reply["accepted"]}
            promise = reply.get("promise")
            run.feed(pc.Phase1b(now=trio.current_time(), acceptor=acceptor, ballot=ballot,
                                promised=reply["promised"], accepted=accepted,
                                promise=ballot_of(promise) if promise is not None else None,
                                forgotten=reply.get("forgotten", False)))

    async def phase2a(self, run: ActiveTxn, effect: pc.Phase2a) -> None:
        assert run.tasks is not None
        for acceptor in self._acceptors_if_leading(run):
            run.tasks.start_soon(self._phase2a, run, acceptor, effect)

    async def _phase2a(self, run: ActiveTxn, acceptor: str, effect: pc.Phase2a) -> None:
        params = {"ballot": list(effect.ballot), "values": effect.values}
        reply = await self._ask_acceptor(run, acceptor, "2a", "paxos.accept", params)
        if reply is not None and reply["accepted"]:
            run.feed(pc.Phase2b(now=trio.current_time(), acceptor=acceptor, ballot=effect.ballot,
                                values=reply["accepted"]))

    async def _ask_acceptor(self, run: ActiveTxn, acceptor: str, kind: str, method: str,
                            params: dict[str, Any]) -> dict[str, Any] | None:
        """One recovery message to one acceptor, traced and bounded; None if it did not answer in time."""
        self.m.tracer.sent(run.txid, kind, acceptor, run.hop + 1)
        with trio.move_on_after(self.m.vote_timeout_s):
            try:
                return await self.m.peers.call_node(acceptor, method, {"txid": run.txid, **params})
            except ClusterError as exc:
                log.info("%s: no answer to %s from %s: %s", run.txid, kind, acceptor, exc)
        return None

    async def superseded(self, run: ActiveTxn, effect: pc.Superseded) -> None:
        raise HandedOver(f"{run.txid}: {effect.reason}; the leader of that term finishes it")

    async def outcome_forgotten(self, run: ActiveTxn, effect: pc.OutcomeForgotten) -> None:
        raise Forgotten(f"{run.txid}: acceptor {effect.acceptor} forgot it (every participant had acknowledged "
                        f"its outcome): not recovered", maybe_applied=True)

    # -- the client ----------------------------------------------------------------------------

    async def reply(self, run: ActiveTxn, effect: Reply) -> None:
        spec = self.m.spec
        for point in spec.reply_holds if spec is not None else ():
            await self.m.hooks.checkpoint(point, run.txid)
        reasons = [f"{p} voted no: {run.why.get(p) or 'it gave no reason'}" for p in effect.no_votes]
        self.m.replied(run, effect.outcome, "; ".join(reasons + ([effect.reason] if effect.reason else [])))

    async def failed(self, run: ActiveTxn, effect: Failed) -> None:
        """The core raised ProtocolError (or emitted what no executor carries out): this transaction only."""
        log.error("%s: its %s core failed: %s", run.txid, self.m.protocol, effect.reason)
        self.m.outcomes["protocol_error"] += 1
        if effect.reason and not run.reply.done.is_set():
            run.reply.reason = effect.reason  # the client hears it as CommitUnknown: it may have committed

