"""The trio driver that runs coordinator cores on a node, and where their decisions are kept.

One driver (``TransactionManager._drive``) runs every core, the
``TwoPhaseCoordinator`` and the ``PaxosCommitLeader`` alike: it feeds the core
events and carries out its effects, each network or disk effect as a task in
the manager's nursery whose result comes back as the next event (unsolicited
messages, Paxos 2b bundles, arrive through ``deliver``).

For Paxos Commit the acceptors hold the outcome, so there is no decision
store: a new leader learns of a transaction when an in-doubt participant
asks (``status``), and recovers it with phase 1 at a higher ballot. For 2PC
two decision stores differ in durability, which is the whole difference
between the two variants:

* ``LocalLogStore`` (``2pc``): the decision is forced to this node's
  ``DecisionLog``. Only the configured coordinator node runs it.
* ``RaftStore`` (``raft-2pc``): ``begin`` and the compare-and-set ``decide``
  are entries of the coordinator group; the group's leader runs the manager,
  and a new leader resumes every transaction it finds in flight
  (``recover_in_flight``).

``FaultHooks`` is the test-only way (``transactions.fault_hooks = true``) to
hold a coordinator at a named step so a test can kill it there.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from commit.node.decision_log import DecisionLog
from commit.node.peers import Peers
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.tracing import Tracer
from commit.outcomes import ABORTED, PENDING
from commit.protocols import paxos_commit as pc
from commit.protocols import three_phase as three
from commit.protocols import two_phase as tp
from commit.protocols.registry import CoreContext, ProtocolSpec
from commit.status import participants_know
from consensus.errors import ClusterError, InvalidRequest, Unavailable
from consensus.group import ReplicaGroup
from consensus.paxos import Ballot, ballot_of

log = logging.getLogger(__name__)

HOLD_POINTS = (
    "coordinator.after_votes",
    "coordinator.after_one_precommit",
    "coordinator.after_decision",
    "participant.before_2a",
)


class FaultHooks:
    """Named points where a test can freeze a coordinator (then kill -9 it)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.armed: set[str] = set()

    def arm(self, point: str) -> None:
        if not self.enabled:
            raise InvalidRequest("fault hooks are disabled (transactions.fault_hooks = false)")
        if point not in HOLD_POINTS:
            raise InvalidRequest(f"unknown hold point {point!r}; known: {', '.join(HOLD_POINTS)}")
        self.armed.add(point)

    def armed_at(self, point: str) -> bool:
        return point in self.armed

    async def checkpoint(self, point: str, txid: str) -> None:
        if point in self.armed:
            log.warning("HOLD %s at %s (test fault hook)", txid, point)
            await trio.sleep_forever()


class DecisionStore(Protocol):
    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None: ...

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str: ...

    async def finish(self, txid: str) -> None: ...

    async def status(self, txid: str, active: bool) -> str: ...

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None: ...


class LocalLogStore:
    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log
        self.presumed_aborted: set[str] = set()

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None:
        return None

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        if txid in self.presumed_aborted:
            return ABORTED
        return await trio.to_thread.run_sync(self.log.decide, txid, outcome, participants)

    async def finish(self, txid: str) -> None:
        self.log.finish(txid)

    async def status(self, txid: str, active: bool) -> str:
        logged = self.log.decisions.get(txid)
        if logged is not None:
            return logged.outcome
        if active:
            return PENDING
        self.presumed_aborted.add(txid)  # never decide commit for it from now on
        return ABORTED

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        return None  # nothing is recorded before the decision: an undecided txid is presumed aborted


class RaftStore:
    def __init__(self, group: ReplicaGroup) -> None:
        self.group = group

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None:
        result = await self.group.propose(("begin", txid, participants))
        return None if result == PENDING else result

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str:
        return await self.group.propose(("decide", txid, outcome))

    async def finish(self, txid: str) -> None:
        await self.group.propose(("finish", txid))

    async def status(self, txid: str, active: bool) -> str:
        return await self.group.propose(("fence", txid))

    def recorded_participants(self, txid: str) -> tuple[str, ...] | None:
        """The participants of txid's begin record, if it is still in flight here (after a status question)."""
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        record = machine.txns.get(txid)
        return record.participants if record is not None and record.outcome is None else None


class _Reply:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: str | None = None
        self.reason = ""


Core = tp.TwoPhaseCoordinator | pc.PaxosCommitLeader | three.ThreePhaseCoordinator | three.Terminator
MAX_REMEMBERED = 100_000


@dataclass
class ActiveTxn:
    core: Core
    started: float
    reply: _Reply
    payloads: dict[str, dict[str, Any]] | None
    inbox: Callable[[Any], None] | None = None
    hop: int = 1  # the client's commit request
    why: dict[str, str] = field(default_factory=dict)  # participant -> why it voted no, in its own words
    term: int = 0  # Paxos Commit: the Raft term this node led in when the core started; its ballots carry it


@dataclass(frozen=True)
class PaxosSetup:
    """What a Paxos Commit leader needs besides the common settings: its acceptors, its rank among them,
    and this node's view of the coordinator group (current Raft term, and whether it leads)."""

    acceptors: tuple[str, ...]
    rank: int
    term: Callable[[], int]
    leading: Callable[[], bool]

    def leads_in(self, term: int) -> bool:
        """Whether this node still leads the coordinator group in ``term``: only then may it use ballots of it."""
        return self.leading() and self.term() == term


class HandedOver(Unavailable):
    """This node stopped driving a transaction that another coordinator-group leader owns now."""


class TransactionManager:
    """Runs the coordinator cores of one protocol on this node, with one driver for every core."""

    def __init__(
        self,
        spec: ProtocolSpec | None,
        store: DecisionStore | None,
        peers: Peers,
        *,
        node_id: str,
        vote_timeout_s: float,
        resend_s: float,
        persist_timeout_s: float,
        hooks: FaultHooks,
        tracer: Tracer,
        nursery: trio.Nursery,
        paxos: PaxosSetup | None = None,
    ) -> None:
        self.spec = spec
        self.protocol = spec.name if spec is not None else "3pc-termination"  # labels: counters, traces
        self.store = store
        self.peers = peers
        self.node_id = node_id
        self.vote_timeout_s = vote_timeout_s
        self.resend_s = resend_s
        self.persist_timeout_s = persist_timeout_s
        self.hooks = hooks
        self.tracer = tracer
        self.nursery = nursery
        self.paxos = paxos
        self.active: dict[str, ActiveTxn] = {}
        self.outcomes: Counter[str] = Counter()
        self.decided: OrderedDict[str, str] = OrderedDict()  # Paxos Commit: outcomes learned, a cache
        self._ballot_counter = itertools.count(1)

    def _ballots(self, term: int) -> Iterator[Ballot]:
        """Ballots unique to this leader: (Raft term, rank, counter).

        The term is the one this node leads in (one leader per term, and a node leads a term only once),
        so no two leaders share a ballot, and a later leader's ballots are always higher. The driver
        stops a core before it sends a ballot of a term this node no longer leads (``leads_in``).
        """
        assert self.paxos is not None
        while True:
            yield (term, self.paxos.rank, next(self._ballot_counter))

    def _core(self, txid: str, participants: tuple[str, ...], term: int) -> Core:
        assert self.spec is not None and self.spec.core is not None
        return self.spec.core(CoreContext(
            txid=txid, participants=participants, vote_timeout_s=self.vote_timeout_s, resend_s=self.resend_s,
            acceptors=self.paxos.acceptors if self.paxos is not None else (),
            ballots=self._ballots(term) if self.paxos is not None else None,
        ))

    async def commit(self, txid: str, payloads: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
        """Run the protocol for txid; returns ``(outcome, reason)`` once the outcome is durable.

        The outcome is None when this coordinator stopped before deciding (a store write that did not
        become durable in time, or a transaction handed over to a later leader): it may still commit.
        """
        active = self.active.get(txid)
        if active is None:
            known = self.decided.get(txid)
            if known is not None:
                return known, ""
            if txid in getattr(self.store, "presumed_aborted", ()):
                return ABORTED, "the coordinator already presumed this transaction aborted"
            active = self._launch(txid, tuple(sorted(payloads)), payloads, None)
        await active.reply.done.wait()
        return active.reply.outcome, active.reply.reason

    async def status(self, txid: str, participants: tuple[str, ...] = ()) -> str:
        """What this coordinator knows of txid; ``participants`` are txid's own (the caller checked them)."""
        active = self.active.get(txid)
        if self.store is not None:
            outcome = await self.store.status(txid, active=active is not None and active.reply.outcome is None)
            recorded = self.store.recorded_participants(txid) if outcome == PENDING and active is None else None
            if recorded is not None:
                self.resume(txid, recorded, None)  # a begin record nobody drives (its coordinator stopped)
            return outcome
        if active is not None:
            return active.reply.outcome or PENDING
        known = self.decided.get(txid)
        if known is not None or not participants:
            return known or PENDING  # without the participants there is no instance to recover
        if self.spec is not None and self.spec.participants_terminate:
            return await participants_know(self.peers.db, txid, participants, self.vote_timeout_s)
        active = self._launch(txid, participants, None, pc.Recover(now=trio.current_time()))
        with trio.move_on_after(self.persist_timeout_s):
            await active.reply.done.wait()
        return active.reply.outcome or PENDING

    def terminate(self, txid: str, participants: tuple[str, ...], round_: three.Round, quorum: bool) -> bool:
        """Run Skeen's termination protocol for txid at ``round_``, unless a terminator already runs here."""
        if txid in self.active:
            return False
        core = three.Terminator(txid, participants, round_, quorum, self.vote_timeout_s)
        self._start(txid, core, None, tp.Start(now=trio.current_time()))
        return True

    def resume(self, txid: str, participants: tuple[str, ...], outcome: str | None) -> None:
        """Finish a transaction this node found unfinished in durable state (after a crash or failover)."""
        if txid not in self.active:
            self._launch(txid, participants, None, tp.Recover(now=trio.current_time(), outcome=outcome))

    def deliver(self, txid: str, event: Any, hop: int, reasons: dict[str, str]) -> None:
        """An unsolicited protocol message for txid (a Paxos 2b, with the NO voters' reasons it carried);
        dropped if no core runs it here."""
        active = self.active.get(txid)
        if active is not None and active.inbox is not None:
            active.hop = max(active.hop, hop)
            active.why.update(reasons)
            active.inbox(event)

    def _launch(
        self, txid: str, participants: tuple[str, ...], payloads: dict[str, dict[str, Any]] | None,
        first: Any,
    ) -> ActiveTxn:
        term = self.paxos.term() if self.paxos is not None else 0
        return self._start(txid, self._core(txid, participants, term), payloads,
                           first or tp.Start(now=trio.current_time()), term)

    def _start(self, txid: str, core: Core, payloads: dict[str, dict[str, Any]] | None, first: Any,
               term: int = 0) -> ActiveTxn:
        active = ActiveTxn(core, trio.current_time(), _Reply(), payloads, term=term)
        self.active[txid] = active
        self.nursery.start_soon(self._drive, txid, active, first)
        return active

    async def _drive(self, txid: str, active: ActiveTxn, first: Any) -> None:
        send, receive = trio.open_memory_channel[Any](math.inf)
        active.inbox = send.send_nowait
        timers: dict[str, float] = {}
        try:
            async with trio.open_nursery() as tasks:
                event: Any = first
                while True:
                    for effect in active.core.handle(event):
                        await self._execute(txid, active, effect, tasks, send.send_nowait, timers)
                    if active.core.state == "done":
                        break
                    deadline = min(timers.values(), default=math.inf)
                    with trio.move_on_at(deadline):
                        event = await receive.receive()
                        continue
                    name = min(timers, key=timers.__getitem__)
                    del timers[name]
                    event = tp.TimerFired(now=trio.current_time(), name=name)
                tasks.cancel_scope.cancel()
        except* ClusterError as group:
            stopped = group.exceptions[0]
            active.reply.reason = f"the coordinator stopped before deciding: {stopped}"
            log.warning("%s: coordinator stopped driving: %s", txid, stopped)
        finally:
            if not active.reply.done.is_set():
                active.reply.reason = active.reply.reason or "the coordinator stopped before deciding"
                active.reply.done.set()
            self.active.pop(txid, None)

    def _acceptors_if_leading(self, active: ActiveTxn) -> tuple[str, ...]:
        """The acceptors to send a recovery ballot to; HandedOver if this node no longer leads its term."""
        assert self.paxos is not None
        if not self.paxos.leads_in(active.term):
            raise HandedOver(f"this node no longer leads the coordinator group in term {active.term}; "
                             f"the current leader finishes the transaction")
        return self.paxos.acceptors

    def _meta(self, active: ActiveTxn) -> dict[str, Any]:
        return {"leader": self.node_id, "hop": active.hop + 1, "protocol": self.protocol,
                "participants": list(active.core.participants)}

    async def _execute(
        self, txid: str, active: ActiveTxn, effect: Any, tasks: trio.Nursery,
        feed: Callable[[Any], None], timers: dict[str, float],
    ) -> None:
        participants = active.core.participants
        match effect:
            case tp.PersistBegin():
                tasks.start_soon(self._persist_begin, txid, participants, feed)
            case tp.PersistDecision(outcome=outcome):
                tasks.start_soon(self._persist_decision, txid, outcome, participants, feed)
            case tp.SendPrepare(participant=shard):
                payload = active.payloads.get(shard) if active.payloads is not None else None
                tasks.start_soon(self._prepare, txid, shard, payload, active, feed)
            case pc.Phase1a(ballot=ballot, participants=instances):
                for acceptor in self._acceptors_if_leading(active):
                    tasks.start_soon(self._phase1a, txid, acceptor, ballot, instances, active, feed)
            case pc.Phase2a(ballot=ballot, values=values):
                for acceptor in self._acceptors_if_leading(active):
                    tasks.start_soon(self._phase2a, txid, acceptor, ballot, values, active, feed)
            case pc.Superseded(reason=reason):
                raise HandedOver(f"{txid}: {reason}; the leader of that term finishes it")
            case three.SendMove(participant=shard, target=target, round=round_):
                if round_ == three.COORDINATOR_ROUND:  # the coordinator's PreCommit
                    await self.hooks.checkpoint("coordinator.after_votes", txid)
                    if self.hooks.armed_at("coordinator.after_one_precommit"):
                        await self._three_phase_call(txid, shard, "3pc.move", round_, active, feed, target=target)
                        await self.hooks.checkpoint("coordinator.after_one_precommit", txid)
                tasks.start_soon(partial(self._three_phase_call, txid, shard, "3pc.move", round_, active, feed,
                                         target=target))
            case three.SendJoin(participant=shard, round=round_):
                tasks.start_soon(self._three_phase_call, txid, shard, "3pc.join", round_, active, feed)
            case three.GaveUp(reason=reason):
                log.info("%s: termination gave up: %s", txid, reason)
            case tp.SendDecision(participant=shard, outcome=outcome):
                tasks.start_soon(self._send_decision, txid, shard, outcome, active, feed)
            case tp.Reply(outcome=outcome, no_votes=no_votes, reason=reason):
                for point in self.spec.reply_holds if self.spec is not None else ():
                    await self.hooks.checkpoint(point, txid)
                if self.store is None:
                    self.decided[txid] = outcome
                    while len(self.decided) > MAX_REMEMBERED:
                        self.decided.popitem(last=False)
                active.reply.outcome = outcome
                reasons = [f"{p} voted no: {active.why.get(p) or 'it gave no reason'}" for p in no_votes]
                active.reply.reason = "; ".join(reasons + ([reason] if reason else []))
                self.outcomes[outcome] += 1
                active.reply.done.set()
            case tp.SetTimer(name=name, deadline=deadline):
                timers[name] = deadline
            case tp.Finished():
                if self.store is not None:
                    tasks.start_soon(self._finish, txid)

    async def _durably(self, what: str, txid: str, write: Callable[[], Awaitable[Any]], forced: bool = True) -> Any:
        """A store write within ``persist_timeout_s``; failing it stops this coordinator (never guesses).

        ``forced``: a message waits for this write (begin, decision), so it counts as a forced write; the
        finish record is written lazily and does not.
        """
        with trio.move_on_after(self.persist_timeout_s):
            result = await write()
            if forced:
                self.tracer.forced(txid, f"{self.protocol} {what}")
            return result
        raise Unavailable(f"{txid}: {what} not durable within {self.persist_timeout_s}s", maybe_applied=True)

    async def _persist_begin(self, txid: str, participants: tuple[str, ...], feed: Callable[[Any], None]) -> None:
        store = self.store
        assert store is not None
        outcome = await self._durably("begin", txid, lambda: store.begin(txid, participants))
        feed(tp.Persisted(now=trio.current_time(), outcome=outcome))

    async def _persist_decision(
        self, txid: str, outcome: str, participants: tuple[str, ...], feed: Callable[[Any], None]
    ) -> None:
        store = self.store
        assert store is not None
        await self.hooks.checkpoint("coordinator.after_votes", txid)
        final = await self._durably("decision", txid, lambda: store.decide(txid, outcome, participants))
        await self.hooks.checkpoint("coordinator.after_decision", txid)
        feed(tp.Persisted(now=trio.current_time(), outcome=final))

    async def _prepare(
        self, txid: str, shard: str, payload: dict[str, Any] | None, active: ActiveTxn,
        feed: Callable[[Any], None],
    ) -> None:
        with trio.move_on_after(self.vote_timeout_s):
            try:
                yes, reason = await self.peers.prepare(shard, txid, payload, self._meta(active))
            except ClusterError as exc:
                log.info("%s: no vote from %s: %s", txid, shard, exc)
                return
            if not yes:
                active.why[shard] = reason
            if self.paxos is not None:
                return  # the vote travels to the acceptors as phase 2a, and reaches us as 2b
            active.hop = max(active.hop, 3)
            feed(tp.Vote(now=trio.current_time(), participant=shard, yes=yes))

    async def _three_phase_call(self, txid: str, shard: str, method: str, round_: three.Round, active: ActiveTxn,
                                feed: Callable[[Any], None], target: str | None = None) -> None:
        """A PreCommit or termination message to one participant; its state comes back as a StateReport."""
        params: dict[str, Any] = {"txid": txid, "shard": shard, "round": list(round_), "leader": self.node_id}
        if target is not None:
            params["target"] = target
        kind = {"3pc.join": "state-request", three.PRECOMMITTED: "precommit", three.PREABORTED: "preabort"}
        hop = active.hop + 1
        params["hop"] = hop
        with trio.move_on_after(self.vote_timeout_s):
            try:
                reply = await self.peers.call_group_traced(shard, method, params, kind[target or method], hop)
            except ClusterError as exc:
                log.info("%s: %s to %s failed: %s", txid, method, shard, exc)
                return
            active.hop = max(active.hop, hop + 1)
            feed(three.StateReport(now=trio.current_time(), participant=shard, state=reply["state"],
                                   promised=(reply["promised"][0], reply["promised"][1])))

    async def _ask_acceptor(self, txid: str, acceptor: str, kind: str, method: str, params: dict[str, Any],
                            active: ActiveTxn) -> dict[str, Any] | None:
        """One recovery message to one acceptor, traced and bounded; None if it did not answer in time."""
        self.tracer.sent(txid, kind, acceptor, active.hop + 1)
        with trio.move_on_after(self.vote_timeout_s):
            try:
                return await self.peers.call_node(acceptor, method, {"txid": txid, **params})
            except ClusterError as exc:
                log.info("%s: no answer to %s from %s: %s", txid, kind, acceptor, exc)
        return None

    async def _phase1a(self, txid: str, acceptor: str, ballot: Ballot, instances: tuple[str, ...],
                       active: ActiveTxn, feed: Callable[[Any], None]) -> None:
        params = {"ballot": list(ballot), "participants": list(active.core.participants),
                  "instances": list(instances)}
        reply = await self._ask_acceptor(txid, acceptor, "1a", "paxos.phase1a", params, active)
        if reply is not None:
            accepted = {p: (ballot_of(b) if b is not None else None, v) for p, b, v in reply["accepted"]}
            promise = reply.get("promise")
            feed(pc.Phase1b(now=trio.current_time(), acceptor=acceptor, ballot=ballot,
                            promised=reply["promised"], accepted=accepted,
                            promise=ballot_of(promise) if promise is not None else None))

    async def _phase2a(self, txid: str, acceptor: str, ballot: Ballot, values: dict[str, str],
                       active: ActiveTxn, feed: Callable[[Any], None]) -> None:
        params = {"ballot": list(ballot), "values": values}
        reply = await self._ask_acceptor(txid, acceptor, "2a", "paxos.accept", params, active)
        if reply is not None and reply["accepted"]:
            feed(pc.Phase2b(now=trio.current_time(), acceptor=acceptor, ballot=ballot, values=reply["accepted"]))

    async def _send_decision(self, txid: str, shard: str, outcome: str, active: ActiveTxn,
                             feed: Callable[[Any], None]) -> None:
        with trio.move_on_after(self.resend_s):
            try:
                await self.peers.decide(shard, txid, outcome, active.hop + 1)
            except ClusterError as exc:
                log.info("%s: %s not acknowledged by %s: %s", txid, outcome, shard, exc)
                return
            feed(tp.Acked(now=trio.current_time(), participant=shard))

    async def _finish(self, txid: str) -> None:
        store = self.store
        assert store is not None
        try:
            await self._durably("finish record", txid, lambda: store.finish(txid), forced=False)
        except ClusterError as exc:
            log.info("%s: finish record not written (a later leader will): %s", txid, exc)

    def in_doubt(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "txid": txid,
                "protocol": self.protocol,
                "participants": ",".join(a.core.participants),
                "state": f"coordinator:{a.core.state}",
                "age_s": round(now - a.started, 3),
            }
            for txid, a in self.active.items()
        ]


async def recover_in_flight(manager: TransactionManager, group: ReplicaGroup) -> int:
    """On becoming coordinator-group leader: resume every transaction the old leader left unfinished."""
    await group.read_barrier()
    machine = group.machine
    assert isinstance(machine, CoordinatorState)
    records = machine.in_flight()
    for txid, record in records:
        manager.resume(txid, record.participants, record.outcome)
    return len(records)

