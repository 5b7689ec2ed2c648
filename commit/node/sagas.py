"""The orchestrator on a node: it drives every active saga while this node leads the coordinator group.

Each saga is a sans-IO core (``commit.protocols.saga``) run by the one driver (``commit.node.driver``);
this module is its executors and its placement:

* ``record_saga`` appends a ``Record``'s events to the saga's history in the coordinator group (a
  compare-and-set on its length) and returns only once they are applied, so the calls that follow are
  made after their history is durable (the driver runs a handle's effects in order, etcd ``Ready``);
* ``call_step`` sends the call to the service (``commit.saga.remote``) in the run's own nursery, bounded
  by the step's attempt timeout, and feeds the answer back;
* ``watch`` adopts every running or compensating saga while this node leads the group (a new leader after
  a kill -9 resumes them all from their histories), and cancels them when it stops leading. A run that
  stopped on a store error (its append refused, a timeout) is adopted again after the retry interval.

A stuck saga has no run: an operator command (``operate``) starts one from its history.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgpack
import trio

from commit.config import Sagas
from commit.node.driver import CoreRun, Failed, drive
from commit.node.state_machines.coordinator_group import CoordinatorState
from commit.node.state_machines.saga_records import SagaRecords
from commit.protocols.events import Finished
from commit.protocols.saga import COMPENSATION, CallStep, Operator, Record, Resume, SagaCore, StepAnswered
from commit.protocols.saga_definition import parse_definition
from commit.saga.barrier import failed as failure
from commit.saga.remote import ServiceConnections
from consensus.errors import InvalidRequest, Timeout
from consensus.group import ReplicaGroup

log = logging.getLogger(__name__)

LEADERSHIP_POLL_S = 0.1


class SagaOrchestrator:
    def __init__(self, group: ReplicaGroup, services: ServiceConnections, sagas: Sagas,
                 request_timeout_s: float, max_reason_chars: int, nursery: trio.Nursery) -> None:
        self.group = group
        self.services = services
        self.sagas = sagas
        self.max_reason_chars = max_reason_chars
        self.request_timeout_s = request_timeout_s
        self.nursery = nursery
        self.runs: dict[str, tuple[trio.CancelScope, CoreRun]] = {}
        self.not_before: dict[str, float] = {}  # a run that stopped on an error is adopted again after this
        self.recorded: dict[str, trio.Event] = {}  # set once an operator's command is in the history
        self.counters = {"runs": 0, "calls": 0, "retries": 0, "compensations": 0, "stopped_on_error": 0}

    @property
    def records(self) -> SagaRecords:
        machine = self.group.machine
        assert isinstance(machine, CoordinatorState)
        return machine.sagas

    def core_of(self, saga: str) -> SagaCore:
        record = self.records.get(saga)
        if record is None:
            raise InvalidRequest(f"no saga {saga}")
        return SagaCore(saga, parse_definition(record.definition, self.sagas), list(record.history))

    # -- placement ---------------------------------------------------------------

    async def watch(self) -> None:
        """Drive every resumable saga while leading; stop them all when leadership goes."""
        leading = False
        while True:
            if self.group.is_leader():
                if not leading:
                    with trio.move_on_after(self.request_timeout_s):
                        await self.group.read_barrier()  # every append of the old leader applied here first
                        leading = True
                        log.info("leading %s: resuming %d sagas", self.group.name, len(self.records.resumable()))
                if leading:
                    self._adopt_all()
            elif leading:
                leading = False
                for scope, _ in self.runs.values():
                    scope.cancel()
            await trio.sleep(LEADERSHIP_POLL_S)

    def _adopt_all(self) -> None:
        now = trio.current_time()
        for saga in self.records.resumable():
            if saga not in self.runs and self.not_before.get(saga, 0.0) <= now:
                self.start_run(saga, Resume(now=now))

    def start_run(self, saga: str, first: Any) -> None:
        """Drive ``saga`` from its history here, first feeding it ``first``; one run per saga at most
        (a start and the watch may both reach a new saga; the history's compare-and-set refuses a second
        writer anyway, but it would call the services in vain)."""
        if saga in self.runs:
            return
        run = CoreRun(saga, self.core_of(saga))
        scope = trio.CancelScope()
        self.runs[saga] = (scope, run)
        self.counters["runs"] += 1
        self.nursery.start_soon(self._drive, run, scope, first)

    async def _drive(self, run: CoreRun, scope: trio.CancelScope, first: Any) -> None:
        try:
            with scope:
                reason = await drive(run, self, first)
                if reason is not None:
                    self.counters["stopped_on_error"] += 1
                    self.not_before[run.txid] = trio.current_time() + self.sagas.initial_interval_s
        finally:
            if self.runs.get(run.txid, (None, None))[0] is scope:
                del self.runs[run.txid]

    async def operate(self, saga: str, command: str, step: str | None) -> str:
        """An operator's retry, skip or compensate: checked against the saga's core, fed to it, and
        answered once it is in the saga's history (with the state the saga is in then).

        A saga being driven here hears the command as its next event; a stuck one (no run) gets a run
        that starts with it, from a history read after a barrier.
        """
        if not self.group.is_leader():
            raise InvalidRequest("operator commands go to the coordinator group's leader")
        live = self.runs.get(saga)
        if live is None:
            with trio.move_on_after(self.request_timeout_s):
                await self.group.read_barrier()
        live = self.runs.get(saga)
        core = live[1].core if live is not None else self.core_of(saga)
        refusal = core.refusal(command, step)
        if refusal is not None:
            raise InvalidRequest(refusal)
        event = Operator(now=trio.current_time(), command=command, step=step)
        recorded = self.recorded.setdefault(saga, trio.Event())
        if live is not None:
            live[1].feed(event)
        else:
            self.start_run(saga, event)
        with trio.move_on_after(self.request_timeout_s):
            await recorded.wait()  # the command is in the history: a client's next show sees it
            record = self.records.get(saga)
            return record.state if record is not None else core.saga_state
        raise Timeout(f"saga {saga}: the {command} was not recorded within {self.request_timeout_s}s",
                      maybe_applied=True)

    # -- executors (commit.node.driver.EXECUTORS) ---------------------------------------

    async def record_saga(self, run: CoreRun, effect: Record) -> None:
        command = ("saga.append", effect.saga, effect.seq, list(effect.events), time.time())
        with trio.move_on_after(self.request_timeout_s):
            await self.group.propose(command)
            if any(e["event"] == "operator" for e in effect.events) and effect.saga in self.recorded:
                self.recorded.pop(effect.saga).set()
            return
        raise Timeout(f"saga {effect.saga}: its history append was not applied within {self.request_timeout_s}s",
                      maybe_applied=True)

    async def call_step(self, run: CoreRun, effect: CallStep) -> None:
        assert run.tasks is not None
        self.counters["calls"] += 1
        if effect.attempt > 1:
            self.counters["retries"] += 1
        if effect.op == COMPENSATION:
            self.counters["compensations"] += 1
        run.tasks.start_soon(self._call, run, effect)

    async def _call(self, run: CoreRun, effect: CallStep) -> None:
        reply = self.bounded(await self.services.call_step(
            effect.service, saga=effect.saga, step=effect.step, op=effect.op,
            handler=effect.handler, input=effect.input, timeout_s=effect.timeout_s,
        ))
        run.feed(StepAnswered(now=trio.current_time(), step=effect.step, op=effect.op, attempt=effect.attempt,
                              reply=reply))

    def bounded(self, reply: dict[str, Any]) -> dict[str, Any]:
        """A service's reply as the history may keep it: every replica holds the history for the saga's
        life, so a result over ``sagas.max_result_bytes`` fails the step (not retryable: the same call
        gives the same result; the barrier kept it, so its compensation undoes it), and an error message
        is cut to ``limits.max_reason_chars``."""
        if "ok" in reply and len(msgpack.packb(reply["ok"])) > self.sagas.max_result_bytes:
            return failure("ResultTooLarge", f"the result packs to more than {self.sagas.max_result_bytes} bytes "
                                            "(sagas.max_result_bytes)", False)
        error = reply.get("failed")
        if isinstance(error, dict):
            return failure(str(error.get("error", "Unknown"))[:self.max_reason_chars],
                          str(error.get("message", ""))[:self.max_reason_chars], bool(error.get("retryable", True)))
        return reply

    async def finished(self, run: CoreRun, effect: Finished) -> None:
        log.info("saga %s: %s", run.txid, effect.outcome)

    async def failed(self, run: CoreRun, effect: Failed) -> None:
        log.error("saga %s: its core failed: %s", run.txid, effect.reason)
