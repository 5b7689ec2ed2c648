"""The trio driver that runs coordinator cores on a node, and where their decisions are kept.

One driver (``TransactionManager._drive``) runs every ``TwoPhaseCoordinator``:
it feeds the core events and carries out its effects, each network or disk
effect as a task in the manager's nursery whose result comes back as the
next event. Two decision stores differ in durability, which is the whole
difference between the protocols:

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

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from commit.coordinator import ABORTED, COMMITTED, PENDING, CoordinatorState
from commit.peers import Peers
from commit.protocols import two_phase as tp
from commit.txlog import DecisionLog
from consensus.errors import ClusterError, InvalidRequest, Unavailable
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)

HOLD_POINTS = ("coordinator.after_votes", "coordinator.after_decision")


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

    async def checkpoint(self, point: str, txid: str) -> None:
        if point in self.armed:
            log.warning("HOLD %s at %s (test fault hook)", txid, point)
            await trio.sleep_forever()


class DecisionStore(Protocol):
    record_begin: bool

    async def begin(self, txid: str, participants: tuple[str, ...]) -> str | None: ...

    async def decide(self, txid: str, outcome: str, participants: tuple[str, ...]) -> str: ...

    async def finish(self, txid: str) -> None: ...

    async def status(self, txid: str, active: bool) -> str: ...


class LocalLogStore:
    record_begin = False

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


class RaftStore:
    record_begin = True

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


class _Reply:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: str | None = None
        self.reason = ""


@dataclass
class ActiveTxn:
    core: tp.TwoPhaseCoordinator
    started: float
    reply: _Reply
    payloads: dict[str, dict[str, Any]] | None
    no_reasons: list[str] = field(default_factory=list)


class TransactionManager:
    def __init__(
        self,
        protocol: str,
        store: DecisionStore,
        peers: Peers,
        *,
        vote_timeout_s: float,
        resend_s: float,
        persist_timeout_s: float,
        hooks: FaultHooks,
        nursery: trio.Nursery,
    ) -> None:
        self.protocol = protocol
        self.store = store
        self.peers = peers
        self.vote_timeout_s = vote_timeout_s
        self.resend_s = resend_s
        self.persist_timeout_s = persist_timeout_s
        self.hooks = hooks
        self.nursery = nursery
        self.active: dict[str, ActiveTxn] = {}
        self.outcomes: Counter[str] = Counter()

    def _core(self, txid: str, participants: tuple[str, ...]) -> tp.TwoPhaseCoordinator:
        return tp.TwoPhaseCoordinator(
            txid, participants, self.store.record_begin, self.vote_timeout_s, self.resend_s
        )

    async def commit(self, txid: str, payloads: dict[str, dict[str, Any]]) -> tuple[str, str]:
        """Run the protocol for txid; returns ``(outcome, reason)`` once the decision is durable."""
        active = self.active.get(txid)
        if active is None:
            if txid in getattr(self.store, "presumed_aborted", ()):
                return ABORTED, "the coordinator already presumed this transaction aborted"
            active = self._launch(txid, tuple(sorted(payloads)), payloads, None)
        await active.reply.done.wait()
        assert active.reply.outcome is not None
        return active.reply.outcome, active.reply.reason

    async def status(self, txid: str) -> str:
        return await self.store.status(txid, active=txid in self.active and self.active[txid].reply.outcome is None)

    def resume(self, txid: str, participants: tuple[str, ...], outcome: str | None) -> None:
        """Finish a transaction this node found unfinished in durable state (after a crash or failover)."""
        if txid not in self.active:
            self._launch(txid, participants, None, tp.Recover(now=trio.current_time(), outcome=outcome))

    def _launch(
        self, txid: str, participants: tuple[str, ...], payloads: dict[str, dict[str, Any]] | None,
        first: tp.Event | None,
    ) -> ActiveTxn:
        active = ActiveTxn(self._core(txid, participants), trio.current_time(), _Reply(), payloads)
        self.active[txid] = active
        self.nursery.start_soon(self._drive, txid, active, first or tp.Start(now=trio.current_time()))
        return active

    async def _drive(self, txid: str, active: ActiveTxn, first: tp.Event) -> None:
        send, receive = trio.open_memory_channel[tp.Event](math.inf)
        timers: dict[str, float] = {}
        try:
            async with trio.open_nursery() as tasks:
                event: tp.Event = first
                while True:
                    for effect in active.core.handle(event):
                        self._execute(txid, active, effect, tasks, send.send_nowait, timers)
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
            log.warning("%s: coordinator stopped driving: %s", txid, group.exceptions[0])
        finally:
            if not active.reply.done.is_set():
                active.reply.reason = "the coordinator stopped before deciding"
                active.reply.done.set()
            self.active.pop(txid, None)

    def _execute(
        self, txid: str, active: ActiveTxn, effect: tp.Effect, tasks: trio.Nursery,
        feed: Callable[[tp.Event], None], timers: dict[str, float],
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
            case tp.SendDecision(participant=shard, outcome=outcome):
                tasks.start_soon(self._send_decision, txid, shard, outcome, feed)
            case tp.Reply(outcome=outcome):
                active.reply.outcome = outcome
                active.reply.reason = "; ".join(active.no_reasons) or (
                    "votes timed out" if outcome == ABORTED else ""
                )
                self.outcomes[outcome] += 1
                active.reply.done.set()
            case tp.SetTimer(name=name, deadline=deadline):
                timers[name] = deadline
            case tp.Finished():
                tasks.start_soon(self._finish, txid)

    async def _durably(self, what: str, txid: str, write: Callable[[], Awaitable[Any]]) -> Any:
        """A store write within ``persist_timeout_s``; failing it stops this coordinator (never guesses)."""
        with trio.move_on_after(self.persist_timeout_s):
            return await write()
        raise Unavailable(f"{txid}: {what} not durable within {self.persist_timeout_s}s", maybe_applied=True)

    async def _persist_begin(self, txid: str, participants: tuple[str, ...], feed: Callable[[tp.Event], None]) -> None:
        outcome = await self._durably("begin record", txid, lambda: self.store.begin(txid, participants))
        feed(tp.Persisted(now=trio.current_time(), outcome=outcome))

    async def _persist_decision(
        self, txid: str, outcome: str, participants: tuple[str, ...], feed: Callable[[tp.Event], None]
    ) -> None:
        await self.hooks.checkpoint("coordinator.after_votes", txid)
        final = await self._durably("decision", txid, lambda: self.store.decide(txid, outcome, participants))
        await self.hooks.checkpoint("coordinator.after_decision", txid)
        feed(tp.Persisted(now=trio.current_time(), outcome=final))

    async def _prepare(
        self, txid: str, shard: str, payload: dict[str, Any] | None, active: ActiveTxn,
        feed: Callable[[tp.Event], None],
    ) -> None:
        with trio.move_on_after(self.vote_timeout_s):
            try:
                yes, reason = await self.peers.prepare(shard, txid, payload)
            except ClusterError as exc:
                log.info("%s: no vote from %s: %s", txid, shard, exc)
                return
            if not yes:
                active.no_reasons.append(f"{shard}: {reason}")
            feed(tp.Vote(now=trio.current_time(), participant=shard, yes=yes))

    async def _send_decision(self, txid: str, shard: str, outcome: str, feed: Callable[[tp.Event], None]) -> None:
        with trio.move_on_after(self.resend_s):
            try:
                await self.peers.decide(shard, txid, outcome)
            except ClusterError as exc:
                log.info("%s: %s not acknowledged by %s: %s", txid, outcome, shard, exc)
                return
            feed(tp.Acked(now=trio.current_time(), participant=shard))

    async def _finish(self, txid: str) -> None:
        try:
            await self._durably("finish record", txid, lambda: self.store.finish(txid))
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

