"""The saga definition checks and the sans-IO saga orchestrator core, driven by hand: exact effects out.

Ends with a property test: a core fed random answers, timers, operator commands and restarts is, after
every event, the core that ``SagaCore(definition, history)`` rebuilds from the events it recorded.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit.config import Sagas
from commit.protocols.events import Finished, ProtocolError, SetTimer, TimerFired
from commit.protocols.saga import (
    ACTION,
    COMPENSATE,
    COMPENSATED,
    COMPENSATING,
    COMPENSATION,
    COMPLETED,
    CONFIRM,
    OPERATOR_COMMANDS,
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
from commit.protocols.saga_definition import (
    MAX_ATTEMPTS_CAP,
    PIVOT,
    RETRIABLE,
    SAGA,
    TCC,
    Definition,
    Retry,
    parse_definition,
)
from consensus.errors import InvalidRequest

SAGAS = Sagas()
SAGA_ID = "s1"


# -- building definitions ----------------------------------------------------------------


def step(name: str, **fields: Any) -> dict[str, Any]:
    """A compensatable step on service ``svc`` as the wire carries it; ``fields`` override or add."""
    return {"name": name, "service": "svc", "action": f"do_{name}", "compensation": f"undo_{name}", **fields}


def pivot(name: str, **fields: Any) -> dict[str, Any]:
    return step(name, **{"kind": PIVOT, "compensation": None, **fields})


def retriable(name: str, **fields: Any) -> dict[str, Any]:
    return step(name, **{"kind": RETRIABLE, "compensation": None, **fields})


def tcc_step(name: str, **fields: Any) -> dict[str, Any]:
    return step(name, **{"confirm": f"confirm_{name}", **fields})


def define(*steps: dict[str, Any], mode: str = SAGA, sagas: Sagas = SAGAS) -> Definition:
    return parse_definition({"mode": mode, "steps": list(steps)}, sagas)


def refused(raw: Any) -> str:
    """The message ``parse_definition`` refuses ``raw`` with."""
    with pytest.raises(InvalidRequest) as info:
        parse_definition(raw, SAGAS)
    return info.value.message


# -- driving a core ----------------------------------------------------------------------


class Driven:
    """A core and the history its ``Record`` effects wrote, each append checked as the group's
    compare-and-set does: ``seq`` must be the number of events recorded before."""

    def __init__(self, definition: Definition, history: list[dict[str, Any]] | None = None) -> None:
        self.definition = definition
        self.history: list[dict[str, Any]] = list(history or [])
        self.core = SagaCore(SAGA_ID, definition, list(self.history))

    def feed(self, event: Any) -> list[Any]:
        effects = self.core.handle(event)
        for effect in effects:
            if isinstance(effect, Record):
                assert effect.seq == len(self.history), (effect, len(self.history))
                self.history.extend(effect.events)
        return effects

    def restarted(self) -> Driven:
        """The core a new leader builds from the recorded history (the live one is dropped)."""
        return Driven(self.definition, self.history)


def ok(name: str, attempt: int = 1, op: str = ACTION, now: float = 1.0, result: Any = None) -> StepAnswered:
    return StepAnswered(now=now, step=name, op=op, attempt=attempt, reply={"ok": result})


def fail(name: str, attempt: int = 1, op: str = ACTION, now: float = 1.0, error: str = "Boom",
         retryable: bool = True) -> StepAnswered:
    reply = {"failed": {"error": error, "message": "it broke", "retryable": retryable}}
    return StepAnswered(now=now, step=name, op=op, attempt=attempt, reply=reply)


def attempt(name: str, n: int = 1, op: str = ACTION) -> dict[str, Any]:
    return {"event": "attempt", "step": name, "op": op, "attempt": n}


def succeeded(name: str, op: str = ACTION, result: Any = None) -> dict[str, Any]:
    return {"event": "succeeded", "step": name, "op": op, "result": result}


def failed(name: str, op: str = ACTION, error: str = "Boom", retryable: bool = True) -> dict[str, Any]:
    return {"event": "failed", "step": name, "op": op, "error": error, "message": "it broke", "retryable": retryable}


def operated(state: str, command: str) -> dict[str, Any]:
    """The state event that follows an operator's command: the state the command put the saga in."""
    return {"event": "state", "state": state, "reason": f"operator: {command}"}


def call(name: str, n: int = 1, op: str = ACTION, timeout_s: float = SAGAS.attempt_timeout_s,
         input: Any = None) -> CallStep:
    handler = {ACTION: f"do_{name}", COMPENSATION: f"undo_{name}", CONFIRM: f"confirm_{name}"}[op]
    return CallStep(saga=SAGA_ID, step=name, op=op, attempt=n, service="svc", handler=handler, input=input,
                    timeout_s=timeout_s)


def record(seq: int, *events: dict[str, Any]) -> Record:
    return Record(saga=SAGA_ID, seq=seq, events=events)


def calls(effects: list[Any]) -> list[tuple[str, str, int]]:
    return [(e.step, e.op, e.attempt) for e in effects if isinstance(e, CallStep)]


def events_of(effects: list[Any]) -> list[dict[str, Any]]:
    return [event for e in effects if isinstance(e, Record) for event in e.events]


def last_state(effects: list[Any]) -> dict[str, Any]:
    return [e for e in events_of(effects) if e["event"] == "state"][-1]


# -- the definition checks ---------------------------------------------------------------


LONG = "x" * (SAGAS.max_name_chars + 1)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ([1, 2], "must be a map with mode and steps"),
        ({"mode": "xa", "steps": [step("a")]}, "saga mode must be one of"),
        ({"steps": []}, "from 1 to 64 steps"),
        ({"steps": [step(f"s{i}") for i in range(SAGAS.max_steps + 1)]}, "from 1 to 64 steps"),
        ({"steps": "a"}, "from 1 to 64 steps"),
        ({"steps": ["a"]}, "step 0 must be a map"),
        ({"steps": [step("a", compensaton="undo")]}, "step 0: unknown fields ['compensaton']"),
        ({"steps": [step("a", retry={"max_attempts": 3})]}, "step a: retry: unknown fields ['max_attempts']"),
        ({"steps": [step("a", compensation_retry={"jitter": 0.1})]},
         "step a: compensation_retry: unknown fields ['jitter']"),
        ({"steps": [step("a"), step("a")]}, "step a: a second step of that name"),
        ({"steps": [step("a", after=["b"]), step("b")]}, "step a: after names ['b'], which are not earlier steps"),
        ({"steps": [step("a"), step("b", after=["a", "zz"])]}, "step b: after names ['zz']"),
        ({"steps": [step("a", after=["a"])]}, "step a: after names ['a']"),
        ({"steps": [step("a", after="b")]}, "step a: after must be a list of step names"),
        ({"steps": [step("a", kind="optional")]}, "step a: kind must be one of"),
        ({"steps": [pivot("p"), pivot("q", after=["p"])]}, "at most one pivot, got ['p', 'q']"),
        ({"steps": [pivot("p"), step("c", after=["p"])]}, "step c: compensatable, so the pivot p must come after it"),
        ({"steps": [step("a"), step("b"), pivot("p", after=["a"])]},
         "step b: compensatable, so the pivot p must come after it"),
        ({"steps": [pivot("p"), retriable("r")]}, "step r: retriable, so it must come after the pivot p"),
        ({"steps": [step("a"), retriable("r", after=["a"])]}, "retriable steps ['r'] need a pivot to follow"),
        ({"steps": [step("a", compensation=None)]}, "a compensatable step has a compensation"),
        ({"steps": [pivot("p", compensation="undo")]}, "a pivot or retriable step has none"),
        ({"steps": [step("a", confirm="c")]}, "step a: confirm is for TCC steps only"),
        ({"mode": TCC, "steps": [step("a")]}, "step a: a TCC step has an action (Try), a compensation (Cancel)"),
        ({"mode": TCC, "steps": [tcc_step("a", compensation=None)]}, "step a: a TCC step has an action (Try)"),
        ({"mode": TCC, "steps": [tcc_step("a", kind=PIVOT)]}, "step a: a TCC step has an action (Try)"),
        ({"steps": [step("a", timeout_s=0)]}, "step a: timeout_s must be a number of seconds above 0"),
        ({"steps": [step("a", timeout_s=True)]}, "step a: timeout_s must be a number"),
        ({"steps": [step("a", timeout_s=float("nan"))]}, "step a: timeout_s must be a number"),
        ({"steps": [step("a", retry=[])]}, "step a: retry must be a map"),
        ({"steps": [step("a", retry={"initial_interval_s": -1})]},
         "step a: retry: initial_interval_s must be a number of seconds above 0"),
        ({"steps": [step("a", retry={"initial_interval_s": True})]}, "step a: retry: initial_interval_s"),
        ({"steps": [step("a", retry={"backoff_coefficient": 0.5})]},
         "step a: retry: backoff_coefficient must be from 1 to 100"),
        ({"steps": [step("a", retry={"backoff_coefficient": True})]}, "step a: retry: backoff_coefficient"),
        ({"steps": [step("a", retry={"initial_interval_s": 2, "maximum_interval_s": 1})]},
         "step a: retry: maximum_interval_s must be at least initial_interval_s"),
        ({"steps": [step("a", retry={"maximum_attempts": -1})]},
         "step a: retry: maximum_attempts must be an integer from 0 (no limit)"),
        ({"steps": [step("a", retry={"maximum_attempts": True})]}, "step a: retry: maximum_attempts"),
        ({"steps": [step("a", retry={"maximum_attempts": 2.0})]}, "step a: retry: maximum_attempts"),
        ({"steps": [step("a", retry={"maximum_attempts": MAX_ATTEMPTS_CAP + 1})]}, "step a: retry: maximum_attempts"),
        ({"steps": [step("a", compensation_retry={"maximum_attempts": -3})]},
         "step a: compensation_retry: maximum_attempts"),
        ({"steps": [step("a", retry={"non_retryable_errors": "Declined"})]},
         "step a: retry: non_retryable_errors must be a list of error names"),
        ({"steps": [step("a", retry={"non_retryable_errors": [LONG]})]}, "step a: retry: an error name must be"),
        ({"steps": [step(LONG)]}, "step 0: name must be a printable string of 1 to 128 characters"),
        ({"steps": [step("")]}, "step 0: name must be a printable string"),
        ({"steps": [step("a", service=LONG)]}, "step a: service must be a printable string"),
        ({"steps": [step("a", action="do\na")]}, "step a: action must be a printable string"),
        ({"steps": [step("a", compensation=LONG)]}, "step a: compensation must be a printable string"),
        ({"steps": [step("a/b")]}, "step 0: name must be a printable string of 1 to 128 characters without '/'"),
        ({"steps": [step("a", service="inventory/x")]}, "step a: service must be a printable string"),
    ],
)
def test_a_bad_definition_is_refused_with_a_message_naming_the_problem(raw: Any, named: str) -> None:
    assert named in refused(raw)


def test_a_good_definition_fills_every_retry_policy_and_timeout_from_the_sagas_defaults() -> None:
    definition = define(step("a"), step("b"), pivot("p", after=["a", "b", "a"], timeout_s=2.5),
                        retriable("r", after=["p"], retry={"initial_interval_s": 10.0, "maximum_attempts": 0}))
    default = Retry(initial_interval_s=0.2, backoff_coefficient=2.0, maximum_interval_s=5.0, maximum_attempts=5)
    assert definition.retries == {"a": default, "b": default, "p": default,
                                  "r": Retry(initial_interval_s=10.0, backoff_coefficient=2.0,
                                             maximum_interval_s=10.0, maximum_attempts=0)}
    undo = Retry(initial_interval_s=0.2, backoff_coefficient=2.0, maximum_interval_s=5.0, maximum_attempts=50)
    assert definition.compensation_retries == {"a": undo, "b": undo, "p": undo, "r": undo}
    assert definition.timeouts == {"a": 5.0, "b": 5.0, "p": 2.5, "r": 5.0}
    assert definition.step("p").after == ("a", "b")  # duplicates dropped, order kept
    assert definition.pivot == "p" and definition.mode == SAGA
    # the defaults are the ones handed in, not module constants
    own = define(step("a"), sagas=Sagas(maximum_attempts=7, attempt_timeout_s=1.0))
    assert own.retries["a"].maximum_attempts == 7 and own.timeouts["a"] == 1.0
    assert define(*[step(f"s{i}") for i in range(SAGAS.max_steps)]).pivot is None


def test_a_good_tcc_definition_and_the_non_retryable_error_names() -> None:
    definition = define(tcc_step("a"), tcc_step("b", after=["a"],
                                                 retry={"non_retryable_errors": ["Declined", "Gone"]}), mode=TCC)
    assert definition.mode == TCC and definition.step("b").confirm == "confirm_b"
    assert definition.retries["b"].non_retryable_errors == ("Declined", "Gone")


# -- forward -----------------------------------------------------------------------------


def test_steps_run_in_dag_order_and_independent_steps_are_called_in_the_same_handle() -> None:
    d = Driven(define(step("a", input={"n": 1}), step("b"), step("c", after=["a", "b"]), step("d", after=["c"])))
    assert d.feed(Resume(now=0.0)) == [record(0, attempt("a"), attempt("b")), call("a", input={"n": 1}), call("b")]
    assert d.feed(ok("a", result="A")) == [record(2, succeeded("a", result="A"))]
    assert d.feed(ok("b")) == [record(3, succeeded("b"), attempt("c")), call("c")]
    assert d.feed(ok("c")) == [record(5, succeeded("c"), attempt("d")), call("d")]
    assert d.feed(ok("d")) == [
        record(7, succeeded("d"), {"event": "state", "state": COMPLETED, "reason": "every step succeeded"}),
        Finished(outcome=COMPLETED),
    ]
    assert d.core.saga_state == COMPLETED and d.core.state == "done"
    assert d.core.progress.results == {(s, ACTION): r for s, r in [("a", "A"), ("b", None), ("c", None), ("d", None)]}


def test_the_record_comes_before_the_calls_it_announces_and_its_seq_counts_the_events_before() -> None:
    """Persist before send: a new leader that replays the history knows of every call that may be out."""
    d = Driven(define(step("a"), step("b"), step("c", after=["a"]), pivot("p", after=["b", "c"]),
                      retriable("r1", after=["p"]), retriable("r2", after=["p"])))
    script = [Resume(now=0.0), ok("b"), fail("a"), TimerFired(now=2.0, name="action/a"), ok("a", attempt=2),
              ok("c"), ok("p"), ok("r2"), ok("r1")]
    before = 0
    for event in script:
        effects = d.feed(event)
        kinds = [type(e) for e in effects]
        if CallStep in kinds:
            assert kinds.index(Record) < kinds.index(CallStep), effects
        for effect in effects:
            if isinstance(effect, Record):
                assert effect.seq == before
                before += len(effect.events)
            if isinstance(effect, CallStep):  # every call made has its attempt in the history already
                assert attempt(effect.step, effect.attempt, effect.op) in d.history
    assert d.core.saga_state == COMPLETED and d.core.seq == len(d.history) == before


# -- retry -------------------------------------------------------------------------------


def test_a_retryable_failure_backs_off_as_temporal_does_capped_by_the_maximum_interval() -> None:
    policy = {"initial_interval_s": 1.0, "backoff_coefficient": 3.0, "maximum_interval_s": 10.0, "maximum_attempts": 0}
    d = Driven(define(step("a", retry=policy)))
    d.feed(Resume(now=0.0))
    now = 0.0
    for n, delay in enumerate([1.0, 3.0, 9.0, 10.0, 10.0], start=1):
        now += 1.0
        seq = d.core.seq
        assert d.feed(fail("a", attempt=n, now=now)) == [record(seq, failed("a")),
                                                          SetTimer(name="action/a", deadline=now + delay)]
        assert d.core.progress.waiting == {("a", ACTION)}
        assert d.feed(TimerFired(now=now + delay, name="action/a")) == [record(seq + 1, attempt("a", n + 1)),
                                                                        call("a", n + 1)]
    assert d.core.definition.retries["a"].delay_after(1) == 1.0


def test_the_default_policy_gives_up_after_five_attempts_and_the_saga_compensates() -> None:
    d = Driven(define(step("a")))
    d.feed(Resume(now=0.0))
    for n, delay in enumerate([0.2, 0.4, 0.8, 1.6], start=1):
        assert d.feed(fail("a", attempt=n, now=10.0))[1] == SetTimer(name="action/a", deadline=pytest.approx(10 + delay))
        d.feed(TimerFired(now=11.0, name="action/a"))
    effects = d.feed(fail("a", attempt=5))
    assert [e for e in effects if isinstance(e, SetTimer)] == []
    assert last_state(effects)["state"] == COMPENSATING
    assert calls(effects) == [("a", COMPENSATION, 1)]


@pytest.mark.parametrize(("error", "retryable"), [("Declined", True), ("Other", False)])
def test_a_non_retryable_error_name_or_reply_stops_retrying_at_once(error: str, retryable: bool) -> None:
    d = Driven(define(step("a", retry={"non_retryable_errors": ["Declined"]})))
    d.feed(Resume(now=0.0))
    effects = d.feed(fail("a", error=error, retryable=retryable))
    assert events_of(effects) == [failed("a", error=error, retryable=retryable),
                                  {"event": "state", "state": COMPENSATING,
                                   "reason": f"action of a failed for good: {error}: it broke"},
                                  attempt("a", op=COMPENSATION)]
    assert not any(isinstance(e, SetTimer) for e in effects)


def test_maximum_attempts_zero_never_stops_retrying() -> None:
    d = Driven(define(step("a", retry={"maximum_attempts": 0})))
    d.feed(Resume(now=0.0))
    for n in range(1, 301):
        effects = d.feed(fail("a", attempt=n, now=float(n)))
        assert effects[-1] == SetTimer(name="action/a", deadline=n + min(0.2 * 2 ** (n - 1), 5.0))
        assert calls(d.feed(TimerFired(now=n + 5.0, name="action/a"))) == [("a", ACTION, n + 1)]
    assert d.core.saga_state == RUNNING and d.core.progress.attempts[("a", ACTION)] == 301


def test_a_timer_for_nothing_waiting_does_nothing() -> None:
    d = Driven(define(step("a"), step("b")))
    d.feed(Resume(now=0.0))
    d.feed(fail("a"))
    assert d.feed(TimerFired(now=5.0, name="action/b")) == []  # b is in flight, not waiting
    assert calls(d.feed(TimerFired(now=5.0, name="action/a"))) == [("a", ACTION, 2)]
    assert d.feed(TimerFired(now=6.0, name="action/a")) == []  # already called again


# -- compensation ------------------------------------------------------------------------


def test_compensation_undoes_every_called_step_in_reverse_order_of_first_call_one_at_a_time() -> None:
    """c is called before b (b waits for a), so the order is b, c, a: not the reverse of the definition.
    The failed step b is compensated (its action may have run), and so is c, still in flight."""
    d = Driven(define(step("a"), step("b", after=["a"]), step("c"), step("d", after=["b", "c"])))
    assert calls(d.feed(Resume(now=0.0))) == [("a", ACTION, 1), ("c", ACTION, 1)]
    assert calls(d.feed(ok("a"))) == [("b", ACTION, 1)]
    assert d.core.progress.called == ["a", "c", "b"]
    effects = d.feed(fail("b", retryable=False, error="Declined"))
    assert effects == [
        record(4, failed("b", error="Declined", retryable=False),
               {"event": "state", "state": COMPENSATING, "reason": "action of b failed for good: Declined: it broke"},
               attempt("b", op=COMPENSATION)),
        call("b", op=COMPENSATION),
    ]
    assert d.feed(ok("c")) == []  # a forward answer during compensation: given up, the barrier fences it
    assert ("c", ACTION) not in d.core.progress.results
    assert d.feed(fail("b", op=COMPENSATION, now=3.0)) == [
        record(7, failed("b", op=COMPENSATION)), SetTimer(name="compensation/b", deadline=3.2)]
    assert d.feed(ok("b", op=COMPENSATION)) == []  # the attempt it answers has failed already
    assert calls(d.feed(TimerFired(now=3.2, name="compensation/b"))) == [("b", COMPENSATION, 2)]
    assert calls(d.feed(ok("b", attempt=2, op=COMPENSATION))) == [("c", COMPENSATION, 1)]
    assert calls(d.feed(ok("c", op=COMPENSATION))) == [("a", COMPENSATION, 1)]
    seq = len(d.history)
    assert d.feed(ok("a", op=COMPENSATION)) == [
        record(seq, succeeded("a", op=COMPENSATION),
               {"event": "state", "state": COMPENSATED, "reason": "every called step compensated"}),
        Finished(outcome=COMPENSATED),
    ]
    assert ("d", COMPENSATION) not in d.core.progress.attempts  # never called, so nothing to undo


def test_answers_to_old_attempts_are_ignored() -> None:
    d = Driven(define(step("a"), step("b")))
    d.feed(Resume(now=0.0))
    d.feed(fail("a"))
    d.feed(TimerFired(now=1.2, name="action/a"))
    seq = d.core.seq
    assert d.feed(ok("a", attempt=1)) == [] and d.feed(fail("a", attempt=1)) == []
    assert d.feed(ok("b", attempt=7)) == []
    assert d.core.seq == seq and ("a", ACTION) not in d.core.progress.results
    assert d.feed(ok("a", attempt=2)) == [record(seq, succeeded("a"))]


def test_a_compensation_that_exhausts_its_policy_leaves_the_saga_stuck() -> None:
    d = Driven(define(step("a", compensation_retry={"maximum_attempts": 2})))
    d.feed(Resume(now=0.0))
    d.feed(fail("a", retryable=False))
    d.feed(fail("a", op=COMPENSATION))
    d.feed(TimerFired(now=2.0, name="compensation/a"))
    effects = d.feed(fail("a", attempt=2, op=COMPENSATION))
    assert effects[-1] == Finished(outcome=STUCK)
    assert last_state(effects) == {"event": "state", "state": STUCK,
                                   "reason": "compensation of a failed for good: Boom: it broke",
                                   "step": "a", "op": COMPENSATION, "was": COMPENSATING}
    assert d.core.stuck_on == (("a", COMPENSATION), COMPENSATING) and calls(effects) == []


def test_after_the_pivot_a_failure_goes_forward_only_and_a_step_that_cannot_leaves_the_saga_stuck() -> None:
    d = Driven(define(step("a"), pivot("p", after=["a"]), retriable("r", after=["p"], retry={"maximum_attempts": 2})))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    assert calls(d.feed(ok("p"))) == [("r", ACTION, 1)]
    assert d.core.pivot_done
    assert isinstance(d.feed(fail("r"))[-1], SetTimer)
    d.feed(TimerFired(now=2.0, name="action/r"))
    effects = d.feed(fail("r", attempt=2))
    assert last_state(effects)["state"] == STUCK and calls(effects) == []
    assert d.core.stuck_on == (("r", ACTION), RUNNING)


def test_a_retriable_step_that_fails_for_good_is_stuck_not_compensated() -> None:
    d = Driven(define(step("a"), pivot("p", after=["a"]), retriable("r", after=["p"])))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(ok("p"))
    effects = d.feed(fail("r", retryable=False))
    assert last_state(effects)["state"] == STUCK and effects[-1] == Finished(outcome=STUCK)


def test_a_pivot_whose_last_error_was_retryable_is_stuck_not_compensated() -> None:
    """It may have happened (a timeout), and nothing undoes a pivot."""
    d = Driven(define(step("a"), pivot("p", after=["a"], retry={"maximum_attempts": 2})))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(fail("p", error="Timeout"))
    d.feed(TimerFired(now=2.0, name="action/p"))
    effects = d.feed(fail("p", attempt=2, error="Timeout"))
    assert effects == [
        record(5, failed("p", error="Timeout"),
               {"event": "state", "state": STUCK, "step": "p", "op": ACTION, "was": RUNNING,
                "reason": "action of p failed for good: Timeout: it broke; the pivot may have happened, and it "
                          "cannot be undone, so nothing is compensated"}),
        Finished(outcome=STUCK),
    ]


def test_a_pivot_that_fails_for_good_without_doubt_compensates_the_steps_before_it() -> None:
    d = Driven(define(step("a"), step("b"), pivot("p", after=["a", "b"])))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(ok("b"))
    effects = d.feed(fail("p", retryable=False, error="Declined"))
    assert last_state(effects)["state"] == COMPENSATING
    assert calls(effects) == [("b", COMPENSATION, 1)]  # the pivot has no compensation
    d.feed(ok("b", op=COMPENSATION))
    assert d.feed(ok("a", op=COMPENSATION))[-1] == Finished(outcome=COMPENSATED)


# -- operator ----------------------------------------------------------------------------


def stuck_after_the_pivot() -> Driven:
    """a, then the pivot p, then r, which failed for good: stuck on r."""
    d = Driven(define(step("a"), pivot("p", after=["a"]), retriable("r", after=["p"])))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(ok("p"))
    d.feed(fail("r", retryable=False))
    assert d.core.stuck_on == (("r", ACTION), RUNNING)
    return d


def test_the_operator_retries_the_stuck_step_with_a_fresh_policy() -> None:
    """The policy counts afresh, but attempt numbers go on: no call is ever numbered like an earlier one."""
    d = stuck_after_the_pivot()
    seq = d.core.seq
    assert d.feed(Operator(now=9.0, command=RETRY)) == [
        record(seq, {"event": "operator", "command": RETRY, "step": "r"}, operated(RUNNING, RETRY), attempt("r", 2)),
        call("r", 2)]
    assert d.core.saga_state == RUNNING and d.core.stuck_on is None
    assert d.feed(ok("r", attempt=2))[-1] == Finished(outcome=COMPLETED)


def test_the_operator_skips_the_stuck_step_and_the_saga_goes_forward() -> None:
    d = stuck_after_the_pivot()
    seq = d.core.seq
    assert d.feed(Operator(now=9.0, command=SKIP, step="r")) == [
        record(seq, {"event": "operator", "command": SKIP, "step": "r"}, operated(RUNNING, SKIP),
               {"event": "state", "state": COMPLETED, "reason": "every step succeeded"}),
        Finished(outcome=COMPLETED),
    ]
    assert d.core.progress.results[("r", ACTION)] == {"skipped": True}


def test_the_operator_compensates_a_saga_stuck_on_its_pivot() -> None:
    d = Driven(define(step("a"), pivot("p", after=["a"], retry={"maximum_attempts": 1})))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(fail("p", error="Timeout"))
    assert d.core.saga_state == STUCK and d.core.refusal(COMPENSATE, None) is None
    seq = d.core.seq
    assert d.feed(Operator(now=9.0, command=COMPENSATE)) == [
        record(seq, {"event": "operator", "command": COMPENSATE, "step": "p"}, operated(COMPENSATING, COMPENSATE),
               attempt("a", op=COMPENSATION)),
        call("a", op=COMPENSATION),
    ]
    assert d.feed(ok("a", op=COMPENSATION))[-1] == Finished(outcome=COMPENSATED)


def test_the_operator_retries_a_stuck_compensation() -> None:
    d = Driven(define(step("a"), step("b", after=["a"], compensation_retry={"maximum_attempts": 1})))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(fail("b", retryable=False))
    d.feed(fail("b", op=COMPENSATION))
    assert d.core.stuck_on == (("b", COMPENSATION), COMPENSATING)
    assert calls(d.feed(Operator(now=9.0, command=RETRY, step="b"))) == [("b", COMPENSATION, 2)]
    assert d.core.saga_state == COMPENSATING
    assert calls(d.feed(ok("b", op=COMPENSATION, attempt=2))) == [("a", COMPENSATION, 1)]
    assert d.feed(ok("a", op=COMPENSATION))[-1] == Finished(outcome=COMPENSATED)


def test_operator_commands_that_cannot_apply_are_refused_and_change_nothing() -> None:
    running = Driven(define(step("a"), pivot("p", after=["a"]), retriable("r", after=["p"])))
    running.feed(Resume(now=0.0))
    assert running.core.refusal(RETRY, None) == "saga s1 is running, not stuck: nothing to retry"
    assert running.core.refusal(SKIP, "a") == "saga s1 is running, not stuck: nothing to skip"
    assert running.core.refusal("reset", None) == f"unknown operator command 'reset'; one of {OPERATOR_COMMANDS}"
    assert running.core.refusal(COMPENSATE, None) is None  # before the pivot an operator may give up
    d = stuck_after_the_pivot()
    assert d.core.refusal(RETRY, "a") == "saga s1 is stuck on step r, not a"
    assert d.core.refusal(COMPENSATE, None) == "saga s1 is past its pivot: it can only go forward"
    seq, history = d.core.seq, list(d.history)
    with pytest.raises(ProtocolError, match="past its pivot"):
        d.feed(Operator(now=9.0, command=COMPENSATE))
    with pytest.raises(ProtocolError, match="not a"):
        d.feed(Operator(now=9.0, command=SKIP, step="a"))
    assert d.core.seq == seq and d.history == history and d.core.saga_state == STUCK


# -- TCC ---------------------------------------------------------------------------------


def test_tcc_tries_everything_then_confirms_everything() -> None:
    d = Driven(define(tcc_step("a"), tcc_step("b"), mode=TCC))
    assert calls(d.feed(Resume(now=0.0))) == [("a", ACTION, 1), ("b", ACTION, 1)]
    assert d.feed(ok("a")) == [record(2, succeeded("a"))]  # no confirm before every try succeeded
    assert d.feed(ok("b")) == [record(3, succeeded("b"), attempt("a", op=CONFIRM), attempt("b", op=CONFIRM)),
                               call("a", op=CONFIRM), call("b", op=CONFIRM)]
    assert d.core.refusal(COMPENSATE, None) is not None  # confirming: past the point of no return
    assert d.feed(ok("a", op=CONFIRM)) == [record(6, succeeded("a", op=CONFIRM))]
    assert d.feed(ok("b", op=CONFIRM))[-1] == Finished(outcome=COMPLETED)


def test_a_failed_try_cancels_every_tried_step() -> None:
    d = Driven(define(tcc_step("a"), tcc_step("b"), tcc_step("c", after=["a"]), mode=TCC))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))  # c is tried now
    effects = d.feed(fail("b", retryable=False, error="Declined"))
    assert last_state(effects)["state"] == COMPENSATING
    assert calls(effects) == [("c", COMPENSATION, 1)]  # tried a, b, c: cancelled c, b, a
    assert effects[-1] == call("c", op=COMPENSATION)  # the Cancel is the compensation handler
    assert calls(d.feed(ok("c", op=COMPENSATION))) == [("b", COMPENSATION, 1)]
    assert calls(d.feed(ok("b", op=COMPENSATION))) == [("a", COMPENSATION, 1)]
    assert d.feed(ok("a", op=COMPENSATION))[-1] == Finished(outcome=COMPENSATED)
    assert not any(op == CONFIRM for _, op in d.core.progress.attempts)


def test_a_failed_confirm_is_retried_by_the_compensation_policy_then_stuck() -> None:
    d = Driven(define(tcc_step("a", retry={"initial_interval_s": 9.0},
                               compensation_retry={"maximum_attempts": 2, "initial_interval_s": 0.5}), mode=TCC))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    assert d.feed(fail("a", op=CONFIRM, now=3.0)) == [record(3, failed("a", op=CONFIRM)),
                                                       SetTimer(name="confirm/a", deadline=3.5)]
    assert calls(d.feed(TimerFired(now=3.5, name="confirm/a"))) == [("a", CONFIRM, 2)]
    effects = d.feed(fail("a", attempt=2, op=CONFIRM))
    assert last_state(effects)["state"] == STUCK and d.core.stuck_on == (("a", CONFIRM), RUNNING)
    assert d.core.refusal(COMPENSATE, None) == "saga s1 is past its pivot: it can only go forward"
    assert calls(d.feed(Operator(now=9.0, command=RETRY))) == [("a", CONFIRM, 3)]
    assert d.feed(ok("a", op=CONFIRM, attempt=3))[-1] == Finished(outcome=COMPLETED)


# -- replay ------------------------------------------------------------------------------


def test_a_new_leader_calls_again_whatever_may_not_have_been_answered() -> None:
    d = Driven(define(step("a"), step("b"), step("c")))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(fail("b"))  # waiting for its retry timer, which died with the old leader
    again = d.restarted()
    assert again.core.progress.in_flight == {} and again.core.progress.waiting == set()
    assert again.feed(Resume(now=5.0)) == [record(5, attempt("b", 2), attempt("c", 2)), call("b", 2), call("c", 2)]
    assert again.feed(ok("c", attempt=1)) == []  # the old leader's call: its answer has nowhere to go
    done = Driven(define(step("a")))
    done.feed(Resume(now=0.0))
    done.feed(ok("a"))
    assert done.restarted().feed(Resume(now=1.0)) == [Finished(outcome=COMPLETED)]


REPLAY_DEFINITIONS = {
    "pivot": define(step("a"), step("b"), step("c", after=["a"]),
                    pivot("p", after=["b", "c"], retry={"maximum_attempts": 2}),
                    retriable("r1", after=["p"], retry={"maximum_attempts": 2}), retriable("r2", after=["p"]),
                    retriable("z", after=["r1"])),
    "plain": define(step("a", retry={"maximum_attempts": 2, "non_retryable_errors": ["Declined"]}),
                    step("b", compensation_retry={"maximum_attempts": 2}), step("c", after=["a", "b"])),
    "tcc": define(tcc_step("a", compensation_retry={"maximum_attempts": 2}), tcc_step("b", after=["a"]),
                  tcc_step("c"), mode=TCC),
}


def _comparable(core: SagaCore) -> dict[str, Any]:
    """What a core's history determines: everything but the calls out and the timers set."""
    p = core.progress
    return {"state": core.saga_state, "results": p.results, "attempts": p.attempts, "called": p.called,
            "last_error": p.last_error, "stuck_on": core.stuck_on, "pivot_done": core.pivot_done,
            "seq": core.seq, "reason": core.reason}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(REPLAY_DEFINITIONS)), data=st.data())
def test_a_core_rebuilt_from_its_history_is_the_live_core(shape: str, data: st.DataObject) -> None:
    definition = REPLAY_DEFINITIONS[shape]
    names = [s.name for s in definition.steps]
    d = Driven(definition)
    d.feed(Resume(now=0.0))
    for now in range(1, data.draw(st.integers(5, 60), label="events")):
        p = d.core.progress
        kind = data.draw(st.sampled_from(["answer", "answer", "answer", "stale", "timer", "operator", "restart"]))
        if kind == "answer" and p.in_flight:
            (name, op), n = data.draw(st.sampled_from(sorted(p.in_flight.items())))
            reply = data.draw(st.sampled_from(["ok", "retryable", "final", "declined"]))
            event: Any = (ok(name, n, op, now) if reply == "ok" else
                          fail(name, n, op, now, error="Declined" if reply == "declined" else "Boom",
                               retryable=reply == "retryable"))
        elif kind == "stale":
            name, op = data.draw(st.sampled_from(names)), data.draw(st.sampled_from([ACTION, COMPENSATION, CONFIRM]))
            event = ok(name, data.draw(st.integers(0, 3)), op, now)
            if p.in_flight.get((name, op)) == event.attempt:
                event = ok(name, event.attempt + 1, op, now)
        elif kind == "timer" and p.waiting:
            name, op = data.draw(st.sampled_from(sorted(p.waiting)))
            event = TimerFired(now=now, name=f"{op}/{name}")
        elif kind == "operator":
            command = data.draw(st.sampled_from(OPERATOR_COMMANDS))
            target = data.draw(st.sampled_from([None, *names]))
            event = Operator(now=now, command=command, step=target)
            if d.core.refusal(command, target) is not None:
                before = _comparable(d.core)
                with pytest.raises(ProtocolError):
                    d.feed(event)
                assert _comparable(d.core) == before
                continue
        elif kind == "restart":
            d = d.restarted()
            event = Resume(now=now)
        else:
            event = Resume(now=now)
        stale = kind == "stale"
        seq = d.core.seq
        effects = d.feed(event)
        if stale:
            assert events_of(effects) == [] and d.core.seq == seq
        rebuilt = SagaCore(SAGA_ID, definition, list(d.history))
        assert _comparable(rebuilt) == _comparable(d.core)
        assert rebuilt.progress.in_flight == {}


# -- found by these tests, and fixed ---------------------------------------------------------


def test_an_unlimited_policy_keeps_backing_off_after_many_failures() -> None:
    d = Driven(define(step("a", retry={"maximum_attempts": 0, "backoff_coefficient": 100.0})))
    d.feed(Resume(now=0.0))
    for n in range(1, 156):
        d.feed(fail("a", attempt=n))
        d.feed(TimerFired(now=2.0, name="action/a"))
    assert d.feed(fail("a", attempt=156))[-1] == SetTimer(name="action/a", deadline=1.0 + 5.0)


def test_a_skipped_pivot_means_forward_only() -> None:
    d = Driven(define(step("a"), pivot("p", after=["a"], retry={"maximum_attempts": 1}), retriable("r", after=["p"])))
    d.feed(Resume(now=0.0))
    d.feed(ok("a"))
    d.feed(fail("p", error="Timeout"))  # stuck: the pivot may have happened
    assert calls(d.feed(Operator(now=2.0, command=SKIP))) == [("r", ACTION, 1)]  # the operator says it did
    assert d.core.refusal(COMPENSATE, None) is not None


def test_the_operator_may_not_compensate_while_the_pivot_is_in_flight() -> None:
    d = Driven(define(step("a"), pivot("p", after=["a"])))
    d.feed(Resume(now=0.0))
    assert calls(d.feed(ok("a"))) == [("p", ACTION, 1)]
    assert d.core.refusal(COMPENSATE, None) is not None


def test_a_stuck_saga_takes_no_more_answers_and_a_retry_goes_on() -> None:
    d = Driven(define(pivot("p"), retriable("r1", after=["p"]), retriable("r2", after=["p"])))
    d.feed(Resume(now=0.0))
    d.feed(ok("p"))
    d.feed(fail("r1", retryable=False))
    d.feed(fail("r2", retryable=False))
    d.feed(Operator(now=2.0, command=RETRY))
    assert d.core.saga_state == RUNNING


def test_unknown_top_level_fields_of_a_definition_are_refused() -> None:
    assert "unknown fields ['retry']" in refused({"steps": [step("a")], "retry": {"maximum_attempts": 1}})
