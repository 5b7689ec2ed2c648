"""The saga orchestrator core, sans-IO: answers, timers and operator commands in; history and calls out.

A saga's whole state is its history (Temporal's event history): every transition is a history event, and
a core rebuilt from a definition and a history (``SagaCore(definition, history)``) is the core that wrote
it. The node records the events of one ``handle`` (``Record``) in the coordinator group before it makes
the calls that follow them (``CallStep``), so a new leader that replays the history calls again only what
may not have been answered; the services' barrier (``commit.saga.barrier``) makes that repeat harmless.

The rules, and where they come from:

* Forward: every step whose dependencies succeeded is called (dtm's concurrent saga: a DAG by ``after``).
  A failed call is made again by the step's retry policy (Temporal's fields, ``saga_definition.Retry``).
* Before the pivot, a step that fails for good turns the saga to compensation: the compensations of every
  step that was ever called, in reverse order of first call, one at a time (Garcia-Molina & Salem,
  "Sagas", SIGMOD 1987). A step whose action may not have run is compensated too: the barrier turns that
  into a null compensation that fences the action (dtm), so no action is left hanging.
* After the pivot (Richardson's step kinds), failures go forward only. A pivot cannot be undone, so it
  is given up only on a final answer: a refusal the service's barrier recorded (``commit.saga.barrier``:
  any late attempt of the same step, from a timeout or an old leader, then meets that row and applies
  nothing). A pivot whose attempts ran out on retryable errors (timeouts, an unreachable service) may
  have happened, and the saga is ``stuck`` rather than compensated; an operator may not compensate while
  the pivot's call is out either.
* A compensation (and a TCC Confirm) is retried by its own policy; one that exhausts it leaves the saga
  ``stuck``: visible, kept, and acted on by an operator (Seata's forward / skipAndForward / compensate,
  Temporal's reset). ``Operator`` commands are history events too.
* TCC: all Tries forward; once every Try succeeded, every Confirm; a Try that fails for good cancels
  every Try called (the compensation is the Cancel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from commit.protocols.events import Finished, ProtocolError, SetTimer, TimerFired
from commit.protocols.saga_definition import PIVOT, RETRIABLE, TCC, Definition, Retry

RUNNING, COMPENSATING, COMPLETED, COMPENSATED, STUCK = "running", "compensating", "completed", "compensated", "stuck"
SAGA_STATES = (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, STUCK)
FINAL_STATES = (COMPLETED, COMPENSATED)
ACTION, COMPENSATION, CONFIRM = "action", "compensation", "confirm"
OPS = (ACTION, COMPENSATION, CONFIRM)
RETRY, SKIP, COMPENSATE = "retry", "skip", "compensate"
OPERATOR_COMMANDS = (RETRY, SKIP, COMPENSATE)

Op = tuple[str, str]  # (step, op)


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Drive the saga from its history: the first event of every run (a start, a new leader, a restart)."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepAnswered:
    now: float
    step: str
    op: str
    attempt: int
    reply: dict[str, Any]  # {"ok": result} or {"failed": {"error", "message", "retryable"}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Operator:
    now: float
    command: str
    step: str | None = None


# -- effects -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Append ``events`` to the saga's history, which holds ``seq`` events now (compare-and-set)."""

    saga: str
    seq: int
    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStep:
    saga: str
    step: str
    op: str
    attempt: int
    service: str
    handler: str
    input: Any
    timeout_s: float


@dataclass(slots=True)
class _Progress:
    attempts: dict[Op, int] = field(default_factory=dict)  # calls made, ever (attempt numbers never repeat)
    spent: dict[Op, int] = field(default_factory=dict)  # attempts an operator's retry took off the policy's count
    results: dict[Op, Any] = field(default_factory=dict)  # succeeded or skipped
    in_flight: dict[Op, int] = field(default_factory=dict)  # op -> the attempt awaited
    waiting: set[Op] = field(default_factory=set)  # a retry timer is set
    called: list[str] = field(default_factory=list)  # steps in the order of their first action call
    last_error: dict[Op, dict[str, Any]] = field(default_factory=dict)


class SagaCore:
    """One saga's orchestration; ``state`` is "done" (the driver stops) once it is final or stuck."""

    EFFECTS = (Record, CallStep, SetTimer, Finished)

    def __init__(self, saga: str, definition: Definition, history: list[dict[str, Any]]) -> None:
        self.saga = saga
        self.definition = definition
        self.saga_state = RUNNING
        self.stuck_on: tuple[Op, str] | None = None  # the op that could not go on, and the state it was in
        self.pivot_done = False
        self.reason = ""  # why the saga is in its state, as its last state event says
        self.progress = _Progress()
        self.seq = 0
        self._pending: list[dict[str, Any]] = []
        self._effects: list[Any] = []
        for event in history:
            self._apply(event)
        self.progress.in_flight.clear()  # an answer to a call before this history ended will never arrive

    @property
    def state(self) -> str:
        return "done" if self.saga_state in FINAL_STATES or self.saga_state == STUCK else "active"

    # -- the transitions ---------------------------------------------------------

    def handle(self, event: Any) -> list[Any]:
        self._pending, self._effects = [], []
        match event:
            case Resume(now=now):
                self._advance(now)
            case StepAnswered():
                self._answered(event)
            case TimerFired(now=now, name=name):
                self._retry_due(now, name)
            case Operator(now=now, command=command, step=step):
                refusal = self.refusal(command, step)
                if refusal is not None:
                    raise ProtocolError(refusal)
                self._record({"event": "operator", "command": command, "step": step or self._stuck_step()})
                self._set_state(self.saga_state, f"operator: {command}")  # the records' state follows
                self._advance(now)
            case _:
                raise ProtocolError(f"saga {self.saga}: no transition for {event!r:.80}")
        effects: list[Any] = []
        if self._pending:
            effects.append(Record(saga=self.saga, seq=self.seq - len(self._pending), events=tuple(self._pending)))
        effects += self._effects
        if self.state == "done":
            effects.append(Finished(outcome=self.saga_state))
        return effects

    def refusal(self, command: str, step: str | None) -> str | None:
        """Why an operator command cannot apply now (None: it can); the node answers it as invalid."""
        if command not in OPERATOR_COMMANDS:
            return f"unknown operator command {command!r:.40}; one of {OPERATOR_COMMANDS}"
        if self.saga_state == STUCK and self.stuck_on is None:
            return f"saga {self.saga} is stuck for good: {self.reason}"
        if command == COMPENSATE:
            if self.saga_state not in (RUNNING, STUCK):
                return f"saga {self.saga} is {self.saga_state}: there is nothing to compensate"
            if self._forward_only():
                return f"saga {self.saga} is past its pivot: it can only go forward"
            if self._pivot_out():
                return f"saga {self.saga}: its pivot's call is out, and a pivot cannot be undone; wait for its answer"
            return None
        if self.saga_state != STUCK:
            return f"saga {self.saga} is {self.saga_state}, not stuck: nothing to {command}"
        if step is not None and step != self._stuck_step():
            return f"saga {self.saga} is stuck on step {self._stuck_step()}, not {step}"
        return None

    def _answered(self, answer: StepAnswered) -> None:
        key = (answer.step, answer.op)
        if self.state == "done" or self.progress.in_flight.get(key) != answer.attempt:
            return  # a stale answer: its op was given up, compensated, called again, or the saga stopped
        reply = answer.reply
        if "ok" in reply:
            self._record({"event": "succeeded", "step": answer.step, "op": answer.op, "result": reply["ok"]})
            self._advance(answer.now)
            return
        failed = reply.get("failed") or {}
        error: dict[str, Any] = {"error": str(failed.get("error", "Unknown")), "message": str(failed.get("message", "")),
                 "retryable": bool(failed.get("retryable", True))}
        self._record({"event": "failed", "step": answer.step, "op": answer.op, **error})
        policy = self._policy(key)
        counted = self.progress.attempts[key] - self.progress.spent.get(key, 0)
        if policy.allows(counted, error["error"], error["retryable"]):
            self.progress.waiting.add(key)
            delay = policy.delay_after(counted)
            self._effects.append(SetTimer(name=f"{answer.op}/{answer.step}", deadline=answer.now + delay))
            return
        self._gave_up(key, error, answer.now)

    def _gave_up(self, key: Op, error: dict[str, Any], now: float) -> None:
        step, op = key
        why = f"{op} of {step} failed for good: {error['error']}: {error['message']}"
        if op != ACTION or self._forward_only() or self.definition.step(step).kind == RETRIABLE:
            self._set_state(STUCK, why, key)
        elif self.definition.step(step).kind == PIVOT and error["retryable"]:
            self._set_state(STUCK, f"{why}; the pivot may have happened, and it cannot be undone, so nothing "
                                   "is compensated", key)
        elif self.saga_state == RUNNING:
            self._set_state(COMPENSATING, why)
            self._advance(now)

    def _retry_due(self, now: float, name: str) -> None:
        op, _, step = name.partition("/")
        key = (step, op)
        if self.state == "done" or key not in self.progress.waiting:
            return
        self.progress.waiting.discard(key)
        if self._wanted(key):
            self._call(key)

    def _advance(self, now: float) -> None:
        """Call whatever can be called now, and settle the saga when nothing is left."""
        if self.saga_state == RUNNING:
            ready = self._ready_forward()
            if ready is None:
                self._set_state(COMPLETED, "every step succeeded")
            for key in ready or ():
                self._call(key)
        elif self.saga_state == COMPENSATING:
            undo = self._next_compensation()
            if undo is None:
                self._set_state(COMPENSATED, "every called step compensated")
            elif self._wanted(undo):
                self._call(undo)

    def _ready_forward(self) -> list[Op] | None:
        """The forward ops that can start now; None once every one succeeded (TCC: every Confirm too)."""
        results = self.progress.results
        actions = [(s.name, ACTION) for s in self.definition.steps]
        if all(k in results for k in actions):
            if self.definition.mode != TCC:
                return None
            confirms = [(s.name, CONFIRM) for s in self.definition.steps]
            return None if all(k in results for k in confirms) else [k for k in confirms if self._wanted(k)]
        return [k for k in actions if self._wanted(k)
                and all((a, ACTION) in results for a in self.definition.step(k[0]).after)]

    def _wanted(self, key: Op) -> bool:
        """Not done, not awaited, not waiting for its retry, and of the kind the saga's state calls."""
        p = self.progress
        if key in p.results or key in p.in_flight or key in p.waiting:
            return False
        if key[1] == COMPENSATION:
            return self.saga_state == COMPENSATING
        return self.saga_state == RUNNING

    def _next_compensation(self) -> Op | None:
        for step in reversed(self.progress.called):
            key = (step, COMPENSATION)
            if self.definition.step(step).compensation is not None and key not in self.progress.results:
                return key
        return None

    def _call(self, key: Op) -> None:
        step_name, op = key
        attempt = self.progress.attempts.get(key, 0) + 1
        self._record({"event": "attempt", "step": step_name, "op": op, "attempt": attempt})
        step = self.definition.step(step_name)
        handler = {ACTION: step.action, COMPENSATION: step.compensation, CONFIRM: step.confirm}[op]
        assert handler is not None
        self._effects.append(CallStep(
            saga=self.saga, step=step_name, op=op, attempt=attempt, service=step.service, handler=handler,
            input=step.input, timeout_s=self.definition.timeouts[step_name],
        ))

    # -- history -----------------------------------------------------------------

    def _record(self, event: dict[str, Any]) -> None:
        self._apply(event)
        self._pending.append(event)

    def _set_state(self, state: str, reason: str, key: Op | None = None) -> None:
        event: dict[str, Any] = {"event": "state", "state": state, "reason": reason}
        if key is not None:
            event |= {"step": key[0], "op": key[1], "was": self.saga_state}
        self._record(event)

    def _apply(self, event: dict[str, Any]) -> None:
        """One history event's effect on the state: the same whether it was just made or replayed."""
        self.seq += 1
        p = self.progress
        kind = event.get("event")
        key = (event.get("step", ""), event.get("op", ""))
        if kind == "attempt":
            p.attempts[key] = event["attempt"]
            p.in_flight[key] = event["attempt"]
            if key[1] == ACTION and key[0] not in p.called:
                p.called.append(key[0])
        elif kind == "succeeded":
            p.in_flight.pop(key, None)
            p.results[key] = event["result"]
            if key[1] == ACTION and self.definition.step(key[0]).kind == PIVOT:
                self.pivot_done = True
        elif kind == "failed":
            p.in_flight.pop(key, None)
            p.last_error[key] = event
        elif kind == "state":
            self.saga_state, self.reason = event["state"], event.get("reason", "")
            if event["state"] == STUCK:
                self.stuck_on = (key, event["was"]) if "was" in event else None
            if event["state"] == COMPENSATING:
                self._forget_forward()
        elif kind == "operator":
            self._operated(event["command"], event.get("step"))

    def _operated(self, command: str, step: str | None) -> None:
        if command == COMPENSATE:
            self.saga_state, self.stuck_on = COMPENSATING, None
            self._forget_forward()
            return
        assert self.stuck_on is not None
        key, was = self.stuck_on
        self.saga_state, self.stuck_on = was, None
        if command == RETRY:
            self.progress.spent[key] = self.progress.attempts.get(key, 0)
        else:
            self.progress.results[key] = {"skipped": True}
            if key[1] == ACTION and self.definition.step(key[0]).kind == PIVOT:
                self.pivot_done = True  # the operator says the pivot happened: forward only from here

    def _forget_forward(self) -> None:
        """Compensation starts: forward calls still out are given up (the barrier fences them)."""
        p = self.progress
        p.in_flight = {k: a for k, a in p.in_flight.items() if k[1] == COMPENSATION}
        p.waiting = {k for k in p.waiting if k[1] == COMPENSATION}

    def _pivot_out(self) -> bool:
        """The pivot was called and its answer is awaited, or it waits for its next attempt."""
        pivot = self.definition.pivot
        key = (pivot, ACTION)
        return pivot is not None and (key in self.progress.in_flight or key in self.progress.waiting)

    def _forward_only(self) -> bool:
        """Past the point of no return: the pivot succeeded, or TCC began confirming."""
        confirming = self.definition.mode == TCC and any(k[1] == CONFIRM for k in self.progress.attempts)
        return self.pivot_done or confirming

    def _stuck_step(self) -> str | None:
        return self.stuck_on[0][0] if self.stuck_on is not None else None

    def _policy(self, key: Op) -> Retry:
        step, op = key
        return self.definition.retries[step] if op == ACTION else self.definition.compensation_retries[step]
