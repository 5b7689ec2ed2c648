"""A saga's definition as data: what the client submits and the coordinator group records.

A definition is checked whole before anything is recorded, because a node drives it from the coordinator
group for as long as the saga lives: a step that names a missing dependency, a cycle, a second pivot or a
retriable step that could run before the pivot would wedge or mislead every future leader.

Step kinds are Richardson's (Microservices Patterns, ch. 4): compensatable steps may be undone; the pivot
is the go/no-go step (once it succeeded the saga only goes forward); retriable steps come after the pivot
and are retried until they succeed. The retry policy's fields are Temporal's (``RetryPolicy``:
initial interval, backoff coefficient, maximum interval, maximum attempts with 0 meaning no limit,
non-retryable error names).

TCC (``mode = "tcc"``) reuses the same steps: the action is the Try, the compensation the Cancel, and
``confirm`` the Confirm, which runs for every step once all Tries succeeded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from commit.config import Sagas
from consensus.errors import InvalidRequest

SAGA, TCC = "saga", "tcc"
MODES = (SAGA, TCC)
COMPENSATABLE, PIVOT, RETRIABLE = "compensatable", "pivot", "retriable"
KINDS = (COMPENSATABLE, PIVOT, RETRIABLE)
MAX_ATTEMPTS_CAP = 1_000_000
MAX_INTERVAL_S = 86_400.0
MAX_COEFFICIENT = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """When a failed call is made again (Temporal's retry policy); ``maximum_attempts = 0``: no limit."""

    initial_interval_s: float
    backoff_coefficient: float
    maximum_interval_s: float
    maximum_attempts: int
    non_retryable_errors: tuple[str, ...] = ()

    def delay_after(self, attempt: int) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based); the exponent is capped before
        the power is taken, so an unlimited policy never overflows a float."""
        ceiling = self.maximum_interval_s / self.initial_interval_s
        if self.backoff_coefficient > 1 and attempt - 1 >= math.log(ceiling, self.backoff_coefficient):
            return self.maximum_interval_s
        return min(self.initial_interval_s * self.backoff_coefficient ** (attempt - 1), self.maximum_interval_s)

    def allows(self, attempts: int, error: str, retryable: bool) -> bool:
        """Whether an attempt follows ``attempts`` failed ones, the last with ``error``."""
        if not retryable or error in self.non_retryable_errors:
            return False
        return self.maximum_attempts == 0 or attempts < self.maximum_attempts


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    service: str
    action: str
    compensation: str | None = None
    confirm: str | None = None
    input: Any = None
    kind: str = COMPENSATABLE
    after: tuple[str, ...] = ()
    timeout_s: float | None = None
    retry: dict[str, Any] = field(default_factory=dict)
    compensation_retry: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Definition:
    """A checked definition, with every retry policy filled in from ``[sagas]``."""

    mode: str
    steps: tuple[Step, ...]
    retries: dict[str, Retry]
    compensation_retries: dict[str, Retry]
    timeouts: dict[str, float]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def pivot(self) -> str | None:
        return next((s.name for s in self.steps if s.kind == PIVOT), None)


def to_wire(mode: str, steps: list[Step]) -> dict[str, Any]:
    """What a client sends (``commit.saga.client``): plain msgpack data."""
    return {"mode": mode, "steps": [{**asdict(s), "after": list(s.after)} for s in steps]}


def parse_definition(raw: Any, sagas: Sagas) -> Definition:
    """A definition from the wire, checked whole; ``InvalidRequest`` names the first thing wrong."""
    if not isinstance(raw, dict):
        raise InvalidRequest("a saga definition must be a map with mode and steps")
    unknown = set(raw) - {"mode", "steps"}
    if unknown:
        raise InvalidRequest(f"a saga definition has mode and steps only; unknown fields {sorted(map(str, unknown))}")
    mode = raw.get("mode", SAGA)
    if mode not in MODES:
        raise InvalidRequest(f"saga mode must be one of {MODES}, got {mode!r:.40}")
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= sagas.max_steps:
        raise InvalidRequest(f"a saga needs from 1 to {sagas.max_steps} steps")
    steps: list[Step] = []
    for index, raw_step in enumerate(raw_steps):
        steps.append(_step(raw_step, index, mode, {s.name for s in steps}, sagas))
    _check_kinds(steps)
    return Definition(
        mode=mode,
        steps=tuple(steps),
        retries={s.name: _retry(s.retry, f"step {s.name}: retry", sagas, sagas.maximum_attempts) for s in steps},
        compensation_retries={
            s.name: _retry(s.compensation_retry, f"step {s.name}: compensation_retry", sagas,
                           sagas.compensation_maximum_attempts)
            for s in steps
        },
        timeouts={s.name: s.timeout_s if s.timeout_s is not None else sagas.attempt_timeout_s for s in steps},
    )


NAME_SEPARATOR = "/"  # barrier keys join names with it (commit.saga.barrier), so no name may hold one


def check_name(raw: Any, what: str, sagas: Sagas) -> str:
    if (not isinstance(raw, str) or not 1 <= len(raw) <= sagas.max_name_chars or not raw.isprintable()
            or NAME_SEPARATOR in raw):
        raise InvalidRequest(f"{what} must be a printable string of 1 to {sagas.max_name_chars} characters "
                             f"without {NAME_SEPARATOR!r}")
    return raw


def _step(raw: Any, index: int, mode: str, earlier: set[str], sagas: Sagas) -> Step:
    where = f"step {index}"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be a map")
    unknown = set(raw) - set(Step.__dataclass_fields__)
    if unknown:
        raise InvalidRequest(f"{where}: unknown fields {sorted(map(str, unknown))}")
    name = check_name(raw.get("name"), f"{where}: name", sagas)
    where = f"step {name}"
    if name in earlier:
        raise InvalidRequest(f"{where}: a second step of that name")
    kind = raw.get("kind", COMPENSATABLE)
    if kind not in KINDS:
        raise InvalidRequest(f"{where}: kind must be one of {KINDS}")
    after = raw.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise InvalidRequest(f"{where}: after must be a list of step names")
    missing = [a for a in after if a not in earlier]
    if missing:
        raise InvalidRequest(f"{where}: after names {missing}, which are not earlier steps")
    timeout = raw.get("timeout_s")
    if timeout is not None and not (_is_number(timeout) and 0 < timeout <= MAX_INTERVAL_S):
        raise InvalidRequest(f"{where}: timeout_s must be a number of seconds above 0")
    compensation = _optional_name(raw.get("compensation"), f"{where}: compensation", sagas)
    confirm = _optional_name(raw.get("confirm"), f"{where}: confirm", sagas)
    if mode == TCC:
        if kind != COMPENSATABLE or compensation is None or confirm is None:
            raise InvalidRequest(f"{where}: a TCC step has an action (Try), a compensation (Cancel) and a confirm")
    elif confirm is not None:
        raise InvalidRequest(f"{where}: confirm is for TCC steps only")
    elif (kind == COMPENSATABLE) != (compensation is not None):
        raise InvalidRequest(f"{where}: a compensatable step has a compensation; a pivot or retriable step has none")
    for key in ("retry", "compensation_retry"):
        if not isinstance(raw.get(key, {}), dict):
            raise InvalidRequest(f"{where}: {key} must be a map")
    return Step(
        name=name,
        service=check_name(raw.get("service"), f"{where}: service", sagas),
        action=check_name(raw.get("action"), f"{where}: action", sagas),
        compensation=compensation,
        confirm=confirm,
        input=raw.get("input"),
        kind=kind,
        after=tuple(dict.fromkeys(after)),
        timeout_s=timeout,
        retry=raw.get("retry", {}),
        compensation_retry=raw.get("compensation_retry", {}),
    )


def _optional_name(raw: Any, what: str, sagas: Sagas) -> str | None:
    return None if raw is None else check_name(raw, what, sagas)


def _check_kinds(steps: list[Step]) -> None:
    """At most one pivot; it follows every compensatable step, and every retriable step follows it.

    Then the pivot starts only once nothing compensatable is still running, and nothing that cannot be
    undone runs before the go/no-go point.
    """
    pivots = [s for s in steps if s.kind == PIVOT]
    if len(pivots) > 1:
        raise InvalidRequest(f"a saga has at most one pivot, got {[s.name for s in pivots]}")
    before = _ancestors(steps)
    retriable = [s for s in steps if s.kind == RETRIABLE]
    if not pivots:
        if retriable:
            raise InvalidRequest(f"retriable steps {[s.name for s in retriable]} need a pivot to follow")
        return
    pivot = pivots[0].name
    for step in steps:
        if step.kind == COMPENSATABLE and step.name not in before[pivot]:
            raise InvalidRequest(f"step {step.name}: compensatable, so the pivot {pivot} must come after it")
        if step.kind == RETRIABLE and pivot not in before[step.name]:
            raise InvalidRequest(f"step {step.name}: retriable, so it must come after the pivot {pivot}")


def _ancestors(steps: list[Step]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for step in steps:  # dependencies are earlier steps, so one pass suffices
        found[step.name] = set(step.after).union(*(found[a] for a in step.after))
    return found


def _retry(raw: dict[str, Any], where: str, sagas: Sagas, default_attempts: int) -> Retry:
    unknown = set(raw) - set(Retry.__dataclass_fields__)
    if unknown:
        raise InvalidRequest(f"{where}: unknown fields {sorted(map(str, unknown))}")
    initial = raw.get("initial_interval_s", sagas.initial_interval_s)
    coefficient = raw.get("backoff_coefficient", sagas.backoff_coefficient)
    maximum = raw.get("maximum_interval_s", max(sagas.maximum_interval_s, initial) if _is_number(initial) else 0)
    attempts = raw.get("maximum_attempts", default_attempts)
    names = raw.get("non_retryable_errors", [])
    if not (_is_number(initial) and 0 < initial <= MAX_INTERVAL_S):
        raise InvalidRequest(f"{where}: initial_interval_s must be a number of seconds above 0")
    if not (_is_number(coefficient) and 1 <= coefficient <= MAX_COEFFICIENT):
        raise InvalidRequest(f"{where}: backoff_coefficient must be from 1 to {MAX_COEFFICIENT}")
    if not (_is_number(maximum) and initial <= maximum <= MAX_INTERVAL_S):
        raise InvalidRequest(f"{where}: maximum_interval_s must be at least initial_interval_s")
    if not (isinstance(attempts, int) and not isinstance(attempts, bool) and 0 <= attempts <= MAX_ATTEMPTS_CAP):
        raise InvalidRequest(f"{where}: maximum_attempts must be an integer from 0 (no limit) to {MAX_ATTEMPTS_CAP}")
    if not isinstance(names, list) or len(names) > sagas.max_steps or not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"{where}: non_retryable_errors must be a list of error names")
    return Retry(initial_interval_s=float(initial), backoff_coefficient=float(coefficient),
                 maximum_interval_s=float(maximum), maximum_attempts=attempts,
                 non_retryable_errors=tuple(check_name(n, f"{where}: an error name", sagas) for n in names))


def _is_number(raw: Any) -> bool:
    return isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == raw
