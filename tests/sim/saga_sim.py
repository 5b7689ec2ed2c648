"""A deterministic simulator for the saga orchestrator core, with the checker of what the services hold.

The simulator drives ``commit.protocols.saga.SagaCore`` with the node's own driver code
(``commit.node.driver.CoreRun``: its effect table, its timers, its failure rule) and executors of its own
named as ``driver.EXECUTORS`` names them (``record_saga``, ``call_step``, ``finished``, ``failed``), as
``commit.node.sagas`` does on a node. Everything else is a deterministic model:

* the saga's record in the coordinator group is a list of history events, appended by ``record_saga``
  with the group's compare-and-set on its length; it survives everything;
* the orchestrator process may crash, between two handles or in the middle of one (``torn``: between its
  ``Record`` and the calls it announces, or before the ``Record``), losing its core, its timers and its
  calls; a restart rebuilds the core from the history and feeds it ``Resume``, as a new leader does. A
  stuck saga has no run: an operator command starts one from the history (``commit.node.sagas.operate``);
* each service keeps its own data (``held``: what each step's action reserved, and whether it was
  confirmed) behind the barrier of ``commit.saga.barrier``, modelled rule for rule: a duplicate gets the
  first answer and applies nothing; a compensation with no action row is a null compensation that fences
  the action; an action under a fence is refused (``Fenced``); a confirm without a try is ``NotTried``.
  A business refusal (``Fail``) commits nothing, and the steps the scenario names refuse every time;
* the network is a bag: a call may be delivered late, twice, or never, and its answer may be lost or
  late; a service may fail an attempt retryably having applied nothing (``Unavailable``) or having
  applied it (``CommitUnknown``: the commit went through, the answer did not say so). The executor times
  a call out after its ``timeout_s`` (the call may still apply later); an answer that comes after that is
  fed to the core all the same (the core must know it is stale), but never to a later incarnation;
* time moves only when a timer fires: a retry timer of the core or a call's timeout.

A seeded ``random.Random`` picks the scenario (the definition, the refusals), the fault rates and every
action, so a seed replays a run exactly. After every step the ``SagaChecker`` reads what the services
did, and the run stops with ``SimulationFailure`` at the first of:

* ``exactly-once``: an action, compensation or confirm applied twice;
* ``hanging``: an action applied after its step's compensation (real or null) ran;
* ``undo``: a compensation that undid an action that never applied, a confirm of a try that never
  applied or was cancelled;
* ``history``: a ``Record`` whose ``seq`` is not the history's length.

After healing, ``check_settled`` wants the saga completed or compensated (stuck only on a retriable step
the scenario refuses, when the operator does not skip it) and the services' effective state to match:
completed, every action applied once and nothing compensated (TCC: every try confirmed); compensated,
every applied action undone once and nothing left held; stuck, everything up to the pivot applied and
nothing undone.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from commit.config import Sagas
from commit.node.driver import Call, CoreRun, Failed
from commit.protocols.events import Finished
from commit.protocols.saga import (
    ACTION,
    COMPENSATED,
    COMPENSATION,
    COMPLETED,
    COMPENSATE,
    CONFIRM,
    RETRY,
    RUNNING,
    SKIP,
    STUCK,
    CallStep,
    Operator,
    Record,
    Resume,
    SagaCore,
    StepAnswered,
)
from commit.protocols.saga_definition import COMPENSATABLE, PIVOT, RETRIABLE, SAGA, TCC, parse_definition
from commit.saga.barrier import FENCED, NULL_COMPENSATION, failed, ok
from tests.sim.base import SimulationFailure, weighted_pick

SAGA_ID = "saga-1"
SAGAS = Sagas()
TIMEOUT_S = 1.0
REPLAY = "tests/test_sim_saga.py"

# what one request did at a service (``Effect.what``)
APPLIED, NULL, REFUSED_FENCED, DUPLICATE, DECLINED, ERROR, NOT_TRIED = (
    "applied", "null compensation", "fenced", "duplicate", "declined", "error", "not tried")


def policy(attempts: int) -> dict[str, Any]:
    """A retry policy on the simulator's time scale (a call times out after ``TIMEOUT_S``)."""
    return {"initial_interval_s": 0.1, "backoff_coefficient": 2.0, "maximum_interval_s": 0.8,
            "maximum_attempts": attempts}


# -- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """A saga definition (as the wire carries it) and the business refusals its services will make."""

    mode: str
    steps: tuple[dict[str, Any], ...]
    declines: frozenset[str]  # steps whose action (Try) the service refuses every time (``Fail``)
    skip_stuck: bool  # the operator skips a retriable step stuck on its refusal; else the saga stays stuck

    @property
    def wire(self) -> dict[str, Any]:
        return {"mode": self.mode, "steps": list(self.steps)}

    def kind(self, step: str) -> str:
        return next(s.get("kind", COMPENSATABLE) for s in self.steps if s["name"] == step)

    @property
    def may_stay_stuck(self) -> str | None:
        """The step a settled saga may be stuck on: a refused retriable step nobody skips."""
        refused = [s for s in sorted(self.declines) if self.kind(s) == RETRIABLE]
        return refused[0] if refused and not self.skip_stuck else None


def draw_scenario(rng: random.Random) -> Scenario:
    """A DAG of 1-4 compensatable steps on 1-3 services; in saga mode often a pivot and 0-2 retriable
    steps after it; sometimes one step the service always refuses. Compensatable steps give up after a
    few attempts (so timeouts alone can make a saga compensate); the pivot may give up too (stuck, which
    an operator retries); retriable steps, compensations and confirms never give up on a retryable error,
    so a saga that does not finish is a bug, not bad luck."""
    mode = TCC if rng.random() < 0.3 else SAGA
    services = [f"svc{i}" for i in range(rng.randint(1, 3))]
    steps: list[dict[str, Any]] = []
    names: list[str] = []
    for i in range(rng.randint(1, 4)):
        name = f"c{i}"
        step = {"name": name, "service": rng.choice(services), "action": f"hold_{name}",
                "compensation": f"release_{name}", "input": {"amount": i + 1}, "timeout_s": TIMEOUT_S,
                "after": sorted(rng.sample(names, rng.randint(0, len(names)))),
                "retry": policy(rng.choice((2, 3, 5))), "compensation_retry": policy(0)}
        if mode == TCC:
            step["confirm"] = f"confirm_{name}"
        steps.append(step)
        names.append(name)
    if mode == SAGA and rng.random() < 0.6:
        steps.append({"name": "p", "service": rng.choice(services), "action": "commit_p", "kind": PIVOT,
                      "after": list(names), "timeout_s": TIMEOUT_S, "retry": policy(rng.choice((0, 2, 4)))})
        before = ["p"]
        for i in range(rng.randint(0, 2)):
            steps.append({"name": f"r{i}", "service": rng.choice(services), "action": f"notify_r{i}",
                          "kind": RETRIABLE, "after": rng.choice((["p"], before)), "timeout_s": TIMEOUT_S,
                          "retry": policy(0)})
            before = [f"r{i}"]
    declines = frozenset([rng.choice([s["name"] for s in steps])]) if rng.random() < 0.4 else frozenset()
    return Scenario(mode, tuple(steps), declines, rng.random() < 0.5)


# -- what the services did, and the checker ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    """What one request did at a service: its handler ran and committed (``applied``), or the barrier
    or the business answered without an effect (the other kinds)."""

    service: str
    step: str
    op: str
    what: str


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} violation: {self.detail}"


class SagaChecker:
    """The invariants on the services' effects, as they happen and once the saga settled."""

    def __init__(self) -> None:
        self.applied: Counter[tuple[str, str]] = Counter()  # (step, op) -> times its handler committed
        self.undone: set[str] = set()  # steps whose compensation ran, really or as a null compensation
        self.violations: list[Violation] = []

    def report(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail))

    def feed(self, effect: Effect) -> None:
        step, op = effect.step, effect.op
        if effect.what == NULL:
            self.undone.add(step)
        if effect.what != APPLIED:
            return
        self.applied[(step, op)] += 1
        if self.applied[(step, op)] > 1:
            self.report("exactly-once", f"the {op} of {step} applied {self.applied[(step, op)]} times")
        if op == ACTION and step in self.undone:
            self.report("hanging", f"the action of {step} applied after its compensation")
        if op == COMPENSATION:
            if not self.applied[(step, ACTION)]:
                self.report("undo", f"the compensation of {step} undid an action that never applied")
            self.undone.add(step)
        if op == CONFIRM and (not self.applied[(step, ACTION)] or step in self.undone):
            self.report("undo", f"the confirm of {step} settled a try that is not held")

    def check_end(self, outcome: str, scenario: Scenario, skipped: set[str], held: dict[str, dict[str, Any]],
                  stuck_on: str | None = None) -> None:
        """The services' effective state for the saga's ``outcome``: ``held`` is what the services'
        own data still holds, by step; ``skipped`` the steps an operator skipped."""
        a = self.applied
        for s in scenario.steps:
            step, kind = s["name"], s.get("kind", COMPENSATABLE)
            acted, undone, confirmed = a[(step, ACTION)], a[(step, COMPENSATION)], a[(step, CONFIRM)]
            if outcome == COMPLETED:
                want = 0 if step in skipped else 1
                if acted != want or undone or step in self.undone:
                    self.report("completed", f"{step}: action applied {acted} times (want {want}), "
                                              f"compensated {undone} (null: {step in self.undone and not undone})")
                if scenario.mode == TCC and confirmed != 1:
                    self.report("completed", f"{step}: confirmed {confirmed} times")
                if (step in held) != bool(want) or (scenario.mode == TCC and not held.get(step, {}).get("confirmed")):
                    self.report("completed", f"{step}: the service holds {held.get(step)}")
            elif outcome == COMPENSATED:
                if acted != undone or confirmed or (kind != COMPENSATABLE and acted):
                    self.report("compensated", f"{step} ({kind}): action applied {acted} times, undone {undone}, "
                                                f"confirmed {confirmed}")
                if step in held:
                    self.report("compensated", f"{step}: the service still holds {held[step]}")
            elif outcome == STUCK:
                want = 0 if step == stuck_on else 1 if kind != RETRIABLE else acted
                if acted != want or undone or acted > 1 or (step in held) != bool(want):
                    self.report("stuck", f"{step} ({kind}): action applied {acted} times, undone {undone}, "
                                          f"held {held.get(step)}")
            else:
                self.report("outcome", f"the saga ended {outcome}")


# -- the world ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A call on its way to a service; ``incarnation`` is the orchestrator run that made it."""

    incarnation: int
    call: CallStep

    def __str__(self) -> str:
        c = self.call
        return f"call({c.step}/{c.op}#{c.attempt} -> {c.service}, run {self.incarnation})"


@dataclass(frozen=True, slots=True)
class Answer:
    incarnation: int
    step: str
    op: str
    attempt: int
    reply: dict[str, Any]

    def __str__(self) -> str:
        said = "ok" if "ok" in self.reply else self.reply["failed"]["error"]
        return f"answer({self.step}/{self.op}#{self.attempt} {said}, run {self.incarnation})"


DTM, UNFENCED, OFF = "dtm", "unfenced", "off"
BARRIERS = (DTM, UNFENCED, OFF)


class ServiceModel:
    """One service's data and barrier rows (``commit.saga.barrier``). The other ``barrier`` models are
    broken on purpose, so that the checker is seen to catch them: ``unfenced`` answers duplicates but a
    null compensation leaves no fence; ``off`` runs every request's handler."""

    def __init__(self, name: str, barrier: str = DTM) -> None:
        if barrier not in BARRIERS:
            raise ValueError(f"unknown barrier model {barrier!r}")
        self.name = name
        self.barrier = barrier
        self.held: dict[str, dict[str, Any]] = {}  # the service's own data: step -> what it holds
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}  # (step, op) -> barrier row

    def serve(self, call: CallStep, refuses: bool, glitch: str | None) -> tuple[dict[str, Any], str]:
        """The reply to ``call`` and what it did; ``glitch``: ``error`` fails it retryably having applied
        nothing, ``unknown`` applies it and fails it retryably all the same."""
        if glitch == "error":
            return failed("Unavailable", "the service is busy", True), ERROR
        reply, what = self._serve(call, refuses)
        if glitch == "unknown" and what == APPLIED:
            return failed("CommitUnknown", "the commit went through, its answer was lost", True), what
        return reply, what

    def _serve(self, call: CallStep, refuses: bool) -> tuple[dict[str, Any], str]:
        step, op = call.step, call.op
        if self.barrier != OFF:
            own = self.rows.get((step, op))
            if own is not None:
                if own.get("fenced"):
                    return failed("Fenced", f"{step} was compensated before its action arrived", False), REFUSED_FENCED
                return ok(own.get("ok")), DUPLICATE
            action = self.rows.get((step, ACTION))
            if op == COMPENSATION and (action is None or action.get("fenced")):
                if self.barrier == DTM:
                    self.rows[(step, ACTION)] = FENCED
                self.rows[(step, op)] = NULL_COMPENSATION
                return ok(None), NULL
            if op == CONFIRM and (action is None or action.get("fenced")):
                return failed("NotTried", f"{step} has no recorded try", False), NOT_TRIED
        if op == ACTION:
            if refuses:
                return failed("Declined", f"{self.name} refuses {step}", False), DECLINED
            self.held[step] = {"amount": call.input, "confirmed": False}
            result: Any = {"ref": f"{self.name}:{step}"}
        elif op == COMPENSATION:
            self.held.pop(step, None)
            result = None
        else:
            self.held.setdefault(step, {"amount": call.input})["confirmed"] = True
            result = "confirmed"
        self.rows[(step, op)] = ok(result)
        return ok(result), APPLIED


@dataclass(frozen=True, slots=True)
class Weights:
    """How likely each kind of action is, when it is possible."""

    deliver: float = 10.0
    glitch: float = 0.0  # a request reaches its service, which fails it retryably (applied or not)
    drop: float = 0.0
    duplicate: float = 0.0
    timer: float = 1.0  # a retry timer of the core
    timeout: float = 1.0  # a call times out (healing: only a call whose request and answer are lost)
    crash: float = 0.0
    torn: float = 0.0  # the chance, before each call a handle makes, that the process dies right there
    restart: float = 1.0
    operate: float = 1.0  # the operator retries or skips what a stuck saga is stuck on (``operator_command``)
    compensate: float = 0.0  # the operator gives up on a running saga before its pivot


HEAL = Weights()
Candidate = tuple[float, str, list[Any]]


class SagaWorld:
    """One saga, its services, the orchestrator process, a network and a clock."""

    chaos_steps = (20, 160)
    heal_steps = 3000
    trace_tail = 60

    def __init__(self, seed: int, *, scenario: Scenario | None = None, barrier: str = DTM,
                 compensate: float = 0.0, replay_test: str = "") -> None:
        self.seed = seed
        self.replay_test = replay_test  # the test that replays this seed: ``-k`` of a failure's message
        self.rng = rng = random.Random(f"saga/{seed}")
        self.scenario = scenario or draw_scenario(rng)
        self.definition = parse_definition(self.scenario.wire, SAGAS)
        self.services = {name: ServiceModel(name, barrier)
                         for name in sorted({s.service for s in self.definition.steps})}
        self.chaos = Weights(
            glitch=rng.choice((0.0, 1.0, 3.0)),
            drop=rng.choice((0.0, 0.5, 1.5)),
            duplicate=rng.choice((0.0, 0.5, 1.5)),
            timer=rng.choice((0.5, 1.0, 2.0)),
            timeout=rng.choice((0.3, 1.0, 2.0)),
            crash=rng.choice((0.0, 0.2, 0.6)),
            torn=rng.choice((0.0, 0.05, 0.15)),
            restart=rng.choice((0.5, 2.0)),
            compensate=compensate,
        )
        self.weights = self.chaos
        self.history: list[dict[str, Any]] = []  # the saga's record in the coordinator group
        self.checker = SagaChecker()
        self.up = True
        self.incarnation = 0
        self.run: CoreRun | None = None  # the saga's run on the orchestrator, while it has one
        self.calls: dict[tuple[str, str, int], float] = {}  # the run's calls awaiting an answer -> deadline
        self.bag: list[Request | Answer] = []
        self.now = 0.0
        self.steps = 0
        self.trace: list[str] = []
        self.stats: Counter[str] = Counter()
        self._drive(SagaCore(SAGA_ID, self.definition, []), Resume(now=0.0))  # saga.start

    # -- the orchestrator: commit.node.driver's CoreRun, carried out synchronously -------------

    def core(self) -> SagaCore:
        """The core a new run gets: rebuilt from the recorded history (``SagaOrchestrator.core_of``)."""
        return SagaCore(SAGA_ID, self.definition, list(self.history))

    def _drive(self, core: SagaCore, first: Any) -> None:
        self.incarnation += 1
        self.run = CoreRun(SAGA_ID, core)
        self.calls = {}
        self._carry(self.run, self.run.handle(first))

    def _handle(self, event: Any) -> None:
        assert self.run is not None
        self._carry(self.run, self.run.handle(event))

    def _carry(self, run: CoreRun, calls: list[Call]) -> None:
        """The calls of one handle, in order, each by the executor ``driver.EXECUTORS`` names; a torn
        crash stops them part way."""
        for name, effect in self._ordered(calls):
            if self.rng.random() < self.weights.torn:
                self.stats["torn"] += 1
                self.trace.append(f"     torn: the process dies before {name}")
                self.crash()
                return
            getattr(self, name)(run, effect)

    def _ordered(self, calls: list[Call]) -> list[Call]:
        """The order the executors see the calls in: the driver's, the core's own (a test breaks it)."""
        return calls

    def record_saga(self, run: CoreRun, effect: Record) -> None:
        if effect.seq != len(self.history):
            self.checker.report("history", f"a record at seq {effect.seq} onto {len(self.history)} events")
        self.history.extend(effect.events)

    def call_step(self, run: CoreRun, effect: CallStep) -> None:
        self.calls[(effect.step, effect.op, effect.attempt)] = self.now + effect.timeout_s
        self.bag.append(Request(self.incarnation, effect))

    def finished(self, run: CoreRun, effect: Finished) -> None:
        """The run ends (``drive`` returns): its timers and its calls' tasks go with it."""
        self.stats[f"finished {effect.outcome}"] += 1
        self.run = None
        self.calls = {}

    def failed(self, run: CoreRun, effect: Failed) -> None:
        raise self._failure(f"ProtocolError from the core: {effect.reason}") from run.error

    # -- actions -------------------------------------------------------------------------

    def deliver(self, index: int, glitch: str | None = None) -> None:
        message = self.bag.pop(index)
        if isinstance(message, Request):
            call = message.call
            service = self.services[call.service]
            reply, what = service.serve(call, call.step in self.scenario.declines, glitch)
            self.stats[what] += 1
            self.checker.feed(Effect(service.name, call.step, call.op, what))
            self.bag.append(Answer(message.incarnation, call.step, call.op, call.attempt, reply))
        elif self.run is not None and message.incarnation == self.incarnation:
            if self.calls.pop((message.step, message.op, message.attempt), None) is None:
                self.stats["late answer"] += 1
            self._handle(StepAnswered(now=self.now, step=message.step, op=message.op, attempt=message.attempt,
                                      reply=message.reply))

    def glitch(self, index: int) -> None:
        self.deliver(index, self.rng.choice(("error", "unknown")))

    def drop(self, index: int) -> None:
        self.bag.pop(index)

    def duplicate(self, index: int) -> None:
        self.bag.append(self.bag[index])

    def fire(self, name: str) -> None:
        assert self.run is not None
        self.now = max(self.now, self.run.timers[name])
        self._carry(self.run, self.run.fire(name, self.now))

    def time_out(self, key: tuple[str, str, int]) -> None:
        self.now = max(self.now, self.calls.pop(key))
        self.stats["timeout"] += 1
        step, op, attempt = key
        reply = failed("Timeout", f"no answer within {TIMEOUT_S}s", True)
        self._handle(StepAnswered(now=self.now, step=step, op=op, attempt=attempt, reply=reply))

    def crash(self) -> None:
        self.up = False
        self.run = None
        self.calls = {}
        self.stats["crash"] += 1

    def restart(self) -> None:
        """A new leader: every running or compensating saga gets a run, from its history."""
        self.up = True
        core = self.core()
        if core.state != "done":
            self._drive(core, Resume(now=self.now))

    def operate(self, command: str) -> None:
        """As ``SagaOrchestrator.operate``: a saga with a run hears the command as its next event; a stuck
        one gets a run, from its history, that starts with it."""
        core = self.run.core if self.run is not None else self.core()
        refusal = core.refusal(command, None)
        if refusal is not None:
            raise self._failure(f"the operator's {command} was refused: {refusal}")
        self.stats[f"operator {command}"] += 1
        event = Operator(now=self.now, command=command)
        if self.run is not None:
            self._handle(event)
        else:
            self._drive(core, event)

    # -- the scheduler -------------------------------------------------------------------

    def operator_command(self) -> str | None:
        """What the operator does about a stuck saga: retries an op whose last error was retryable (it
        exhausted its policy on timeouts and glitches), compensates a pivot that refused after an attempt
        that timed out (the core cannot know that no late attempt lands; this operator does), skips a
        refused retriable step if the scenario says so; else nothing."""
        if not self.up or self.run is not None:
            return None
        core = self.core()
        if core.saga_state != STUCK or core.stuck_on is None:
            return None
        key, _ = core.stuck_on
        if core.progress.last_error[key]["retryable"]:
            return RETRY
        if self.scenario.kind(key[0]) == PIVOT:
            return COMPENSATE  # a pivot that timed out and then refused: the operator knows its refusal is final
        return SKIP if key[0] in self.scenario.declines and self.scenario.skip_stuck else None

    def _lost(self, key: tuple[str, str, int]) -> bool:
        """Neither the request nor the answer of this run's call is on its way: only a timeout ends it."""
        for m in self.bag:
            if m.incarnation != self.incarnation:
                continue
            if isinstance(m, Request) and (m.call.step, m.call.op, m.call.attempt) == key:
                return False
            if isinstance(m, Answer) and (m.step, m.op, m.attempt) == key:
                return False
        return True

    def _candidates(self, w: Weights, healing: bool) -> Iterator[Candidate]:
        n = len(self.bag)
        yield (w.deliver, "deliver", list(range(n)))
        yield (w.glitch, "glitch", [i for i, m in enumerate(self.bag) if isinstance(m, Request)])
        yield (w.drop, "drop", list(range(n)))
        yield (w.duplicate, "duplicate", list(range(n)))
        if self.run is not None:
            yield (w.timer, "timer", sorted(self.run.timers))
            yield (w.timeout, "timeout", sorted(k for k in self.calls if not healing or self._lost(k)))
        if self.up:
            yield (w.crash, "crash", [None])
        else:
            yield (w.restart, "restart", [None])
        command = self.operator_command()
        yield (w.operate, "operate", [command] if command else [])
        if self.run is not None and self.run.core.refusal(COMPENSATE, None) is None:
            yield (w.compensate, "operate", [COMPENSATE])

    def step(self, healing: bool = False) -> bool:
        """Run one random action, then check every invariant; False if none is possible."""
        cands = [c for c in self._candidates(self.weights, healing) if c[0] > 0 and c[2]]
        if not cands:
            return False
        self.do(*weighted_pick(self.rng, cands))
        return True

    def do(self, name: str, arg: Any) -> None:
        self.steps += 1
        self.trace.append(f"{self.steps:4d} t={self.now:<6g} {self._describe(name, arg)}")
        match name:
            case "deliver" | "glitch" | "drop" | "duplicate":
                getattr(self, name)(arg)
            case "timer":
                self.fire(arg)
            case "timeout":
                self.time_out(arg)
            case "crash":
                self.crash()
            case "restart":
                self.restart()
            case "operate":
                self.operate(arg)
            case _:
                raise ValueError(f"unknown action {name!r}")
        if self.checker.violations:
            raise self._failure("\n".join(map(str, self.checker.violations)))

    def _describe(self, name: str, arg: Any) -> str:
        if name in ("deliver", "glitch", "drop", "duplicate"):
            return f"{name} {self.bag[arg]}"
        if name == "timeout":
            return "timeout {}/{}#{}".format(*arg)
        return name if arg is None else f"{name} {arg}"

    def settled(self) -> bool:
        """Nothing will happen any more: no run, nothing on the wire, nothing for the operator to do."""
        return self.up and self.run is None and not self.bag and self.operator_command() is None

    def run_chaos(self) -> None:
        for _ in range(self.rng.randint(*self.chaos_steps)):
            if self.settled() or not self.step():
                break

    def heal(self) -> None:
        """No more faults: restart the process, deliver everything, fire the timers, let the operator act;
        SimulationFailure unless the world settles."""
        self.weights = HEAL
        if not self.up:
            self.do("restart", None)
        for _ in range(self.heal_steps):
            if self.settled() or not self.step(healing=True):
                break
        if not self.settled():
            raise self._failure(f"liveness: not settled after healing: state {self.core().saga_state}, "
                                f"run {self.run is not None}, bag {[str(m) for m in self.bag]}, calls {self.calls}")

    def check_settled(self) -> str:
        """After heal: the outcome, once it is one the scenario allows and the services hold what it says."""
        core = self.core()
        outcome = core.saga_state
        stuck_on = self.scenario.may_stay_stuck if outcome == STUCK else None
        if outcome == STUCK and (stuck_on is None or core.stuck_on != ((stuck_on, ACTION), RUNNING)):
            raise self._failure(f"stuck on {core.stuck_on}, which the scenario does not make so: {core.reason}")
        skipped = {step for (step, op), result in core.progress.results.items()
                   if op == ACTION and result == {"skipped": True}}
        held = {step: value for service in self.services.values() for step, value in service.held.items()}
        self.checker.check_end(outcome, self.scenario, skipped, held, stuck_on)
        if self.checker.violations:
            raise self._failure("\n".join(map(str, self.checker.violations)))
        self.stats[outcome] += 1
        return outcome

    def _failure(self, what: str) -> SimulationFailure:
        tail = "\n".join(self.trace[-self.trace_tail:])
        select = f" -k '{self.replay_test}'" if self.replay_test else ""
        return SimulationFailure(
            f"{what}\nreplay with: TEST_SEED={self.seed} .venv/bin/python -m pytest {REPLAY}{select}"
            f" (step {self.steps})\nscenario: {self.scenario}\nlast actions:\n{tail}")


def run_seed(seed: int, world_class: type[SagaWorld] = SagaWorld, **kwargs: Any) -> SagaWorld:
    """A whole run: the chaos of the seed, healing, and the settled checks (each raises at a violation)."""
    world = world_class(seed, **kwargs)
    world.run_chaos()
    world.heal()
    world.check_settled()
    return world
