"""The one driver of every core: events in, effects carried out in order, each by the executor its type names.

A core (``commit.protocols``) is ``handle(event) -> effects`` and does no I/O. A ``CoreRun`` is one core
being driven: it feeds the core an event, keeps the timers the core sets, and turns the other effects
into calls ``(executor name, effect)`` through ``EXECUTORS``, the one table from effect type to executor.
A core that raises ``ProtocolError`` (an event it has no transition for) fails its own run, never
anything else: the run's last call is the driver's own ``Failed`` effect, so the executors tell whoever
waits (logged and counted on a node). An effect the table lacks is an error too (``UnknownEffect``),
never silently dropped.

The contract with the executors, as etcd's ``Ready`` documents it for Raft: the calls of one event are
carried out one after the other, in the order the core emitted them, and each executor returns only once
what must happen before the next call has (a durable write, a test hold); whatever it sends may still be
in flight. The cores rely on that order: a decision is persisted (``PersistDecision``) and its result
fed back (``Persisted``) before any ``Reply`` or ``SendDecision`` of it is emitted, and a participant's
vote is durable in its group before its ballot-0 2a leaves.

Two runtimes carry the calls out. ``drive`` is the node's (trio): it waits for the next event or the
earliest timer, whichever comes first, and awaits each executor in turn. The simulators in
``tests/sim`` call ``CoreRun.handle`` and ``CoreRun.fire`` from their deterministic scheduler and carry
the calls out synchronously: the same table, timers and failure rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from commit.protocols import paxos_commit as pc
from commit.protocols import paxos_participant as pp
from commit.protocols import saga
from commit.protocols import three_phase as three
from commit.protocols import two_phase as tp
from commit.protocols.events import Finished, ProtocolError, Reply, SendDecision, SendPrepare, SetTimer, TimerFired
from consensus.errors import ClusterError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """The driver's own effect: the core raised ``ProtocolError``; its transaction stops here."""

    reason: str


class UnknownEffect(ProtocolError):
    """A core emitted an effect no executor is named for in ``EXECUTORS``: a bug of the registry or a core."""


EXECUTORS: dict[type, str] = {
    tp.PersistBegin: "persist_begin",
    tp.PersistDecision: "persist_decision",
    SendPrepare: "send_prepare",
    SendDecision: "send_decision",
    Reply: "reply",
    Finished: "finished",
    pc.Phase1a: "phase1a",
    pc.Phase2a: "phase2a",
    pc.Superseded: "superseded",
    pc.OutcomeForgotten: "outcome_forgotten",
    three.SendMove: "send_move",
    three.SendJoin: "send_join",
    three.GaveUp: "gave_up",
    Failed: "failed",
    # the participant side (commit.node.paxos_roles, commit.node.silence_watch)
    pp.PersistAcceptances: "persist_acceptances",
    pp.Send2b: "send_2b",
    pp.SendLearn: "send_learn",
    three.AbortAlone: "abort_alone",
    three.Terminate: "terminate",
    # sagas (commit.node.sagas)
    saga.Record: "record_saga",
    saga.CallStep: "call_step",
}

Call = tuple[str, Any]


def calls_of(effects: list[Any], source: str = "a core") -> list[Call]:
    """The calls that carry ``effects`` out, in order; ``UnknownEffect`` for one no executor is named for."""
    calls: list[Call] = []
    for effect in effects:
        name = EXECUTORS.get(type(effect))
        if name is None:
            raise UnknownEffect(f"{source} emitted {effect!r}, which no executor carries out")
        calls.append((name, effect))
    return calls


class CoreRun:
    """One core, driven: its timers, whether it failed, and (under ``drive``) how events reach it."""

    def __init__(self, txid: str, core: Any) -> None:
        self.txid = txid
        self.core = core
        self.timers: dict[str, float] = {}
        self.failure: str | None = None
        self.error: ProtocolError | None = None  # what the core raised, when it failed
        self.feed: Callable[[Any], None] = self._not_driven  # set by ``drive``: hand the core an event
        self.tasks: trio.Nursery | None = None  # set by ``drive``: where executors start their I/O

    def _not_driven(self, event: Any) -> None:
        """Before ``drive`` starts, and after it ended: a late answer for a core that is gone is dropped."""

    @property
    def done(self) -> bool:
        return self.failure is not None or self.core.state == "done"

    def handle(self, event: Any) -> list[Call]:
        """Feed ``event`` to the core; the calls its effects make, in order (timers are kept here)."""
        if self.failure is not None:
            return []
        try:
            effects = self.core.handle(event)
        except ProtocolError as exc:
            self.failure, self.error = f"protocol error: {exc}", exc
            self.timers.clear()
            return [("failed", Failed(reason=self.failure))]
        for timer in (e for e in effects if isinstance(e, SetTimer)):
            self.timers[timer.name] = timer.deadline
        return calls_of([e for e in effects if not isinstance(e, SetTimer)], f"{type(self.core).__name__} of {self.txid}")

    def next_deadline(self) -> float:
        return min(self.timers.values(), default=math.inf)

    def fire(self, name: str, now: float) -> list[Call]:
        """Timer ``name`` went off at ``now``: it is gone, and the core hears of it."""
        del self.timers[name]
        return self.handle(TimerFired(now=now, name=name))

    def earliest_timer(self) -> str:
        return min(self.timers, key=self.timers.__getitem__)


async def carry_out(calls: list[Call], executors: Any, run: CoreRun | None) -> None:
    """Each call by its executor, ``await executors.<name>(run, effect)``, one after the other."""
    for name, effect in calls:
        await getattr(executors, name)(run, effect)


async def drive(run: CoreRun, executors: Any, first: Any) -> str | None:
    """Run one core until it is done; None if it finished, else why it stopped.

    ``first`` is its first event; later ones come from ``run.feed`` (an executor's task, or an unsolicited
    message); a timer fires at its deadline, ``trio.current_time()`` then. Executors start their I/O in
    ``run.tasks``, which is cancelled once the core is done. A core's ``ProtocolError`` (or an effect
    without an executor), a ``ClusterError`` from an executor (a write that was not durable in time, a
    transaction handed over), and any other exception (a bug) stop this run only.
    """
    send, receive = trio.open_memory_channel[Any](math.inf)
    run.feed = send.send_nowait
    reason: str | None = None
    try:
        async with trio.open_nursery() as tasks:
            run.tasks = tasks
            calls = run.handle(first)
            while True:
                await carry_out(calls, executors, run)
                if run.done:
                    break
                with trio.move_on_at(run.next_deadline()):
                    calls = run.handle(await receive.receive())
                    continue
                calls = run.fire(run.earliest_timer(), trio.current_time())
            tasks.cancel_scope.cancel()
    except* ProtocolError as group:
        reason = run.failure = f"protocol error: {group.exceptions[0]}"
        log.error("%s: %s", run.txid, reason)
        await executors.failed(run, Failed(reason=reason))
    except* ClusterError as group:
        reason = str(group.exceptions[0])
        log.warning("%s: stopped driving its core: %s", run.txid, reason)
    except* Exception as group:
        reason = f"internal error: {group.exceptions[0]!r}"
        log.error("%s: stopped driving its core", run.txid, exc_info=group.exceptions[0])
    finally:
        run.feed = run._not_driven
    return reason if reason is not None else run.failure
