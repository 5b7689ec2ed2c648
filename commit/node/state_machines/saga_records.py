"""Saga records in the coordinator group: each saga's definition, its history, and where it stands.

The history is the saga's durable state (``commit.protocols.saga``): the orchestrator appends the events
of each step before it makes the calls they lead to, so a new leader rebuilds every saga from here.
``append`` is a compare-and-set on the history's length: an old leader still driving a saga cannot
interleave its events with the new leader's, and of two runs of one saga only one goes on. Even an
append identical to the one at its position is refused: two runs make identical events, and accepting
both would let both drive the saga. An orchestrator whose append timed out stops and rebuilds the saga
from the history instead of sending it again.

Running, compensating and stuck sagas are never dropped (``max_active_sagas`` bounds how many may
exist: ``start`` is refused beyond it); finished ones are kept up to ``max_remembered_sagas``, oldest
forgotten first. A history that reaches ``max_history_events`` makes its saga stuck (Temporal bounds a
history the same way), and the operator sees why.

Pure and deterministic, like every replicated state machine here: the times come in the commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from commit.config import Sagas
from commit.protocols.saga import COMPENSATING, FINAL_STATES, RUNNING, STUCK
from consensus.bounded import BoundedTable
from consensus.errors import InvalidRequest, Unavailable

HISTORY_FULL = "its history reached sagas.max_history_events"


@dataclass(slots=True)
class SagaRecord:
    definition: dict[str, Any]
    history: list[dict[str, Any]]
    state: str
    started_at: float
    updated_at: float
    reason: str = ""

    def summary(self, saga: str) -> dict[str, Any]:
        return {"saga": saga, "state": self.state, "mode": self.definition.get("mode"),
                "steps": len(self.definition.get("steps", ())), "events": len(self.history),
                "started_at": self.started_at, "updated_at": self.updated_at, "reason": self.reason}


class SagaRecords:
    def __init__(self, sagas: Sagas) -> None:
        self.max_active = sagas.max_active_sagas
        self.max_history = sagas.max_history_events
        self.active: dict[str, SagaRecord] = {}
        self.finished: BoundedTable[str, SagaRecord] = BoundedTable(sagas.max_remembered_sagas)

    def get(self, saga: str) -> SagaRecord | None:
        return self.active.get(saga) or self.finished.get(saga)

    def resumable(self) -> list[str]:
        """The sagas a leader drives: running or compensating, in the order they started."""
        return [s for s, r in self.active.items() if r.state in (RUNNING, COMPENSATING)]

    def counts(self) -> dict[str, int]:
        found = {state: 0 for state in (RUNNING, COMPENSATING, STUCK, *FINAL_STATES)}
        for record in (*self.active.values(), *(r for _, r in self.finished.items())):
            found[record.state] = found.get(record.state, 0) + 1
        return found

    def apply(self, command: Any) -> Any:
        match command:
            case ("saga.start", str() as saga, dict() as definition, float() as at):
                return self._start(saga, definition, at)
            case ("saga.append", str() as saga, int() as seq, list() as events, float() as at):
                return self._append(saga, seq, events, at)
            case _:
                raise InvalidRequest(f"unknown saga command {command!r:.80}")

    def _start(self, saga: str, definition: dict[str, Any], at: float) -> dict[str, Any]:
        known = self.get(saga)
        if known is not None:
            if known.definition != definition:
                raise InvalidRequest(f"saga {saga} exists with another definition")
            return {"saga": saga, "state": known.state, "new": False}
        if len(self.active) >= self.max_active:
            raise Unavailable(f"{len(self.active)} sagas are active (sagas.max_active_sagas); start it later",
                              maybe_applied=False)
        self.active[saga] = SagaRecord(definition, [{"event": "started", "at": at}], RUNNING, at, at)
        return {"saga": saga, "state": RUNNING, "new": True}

    def _append(self, saga: str, seq: int, events: list[Any], at: float) -> dict[str, Any]:
        record = self.active.get(saga)
        if record is None or record.state not in (RUNNING, COMPENSATING, STUCK):
            raise InvalidRequest(f"saga {saga} is not active")
        if not all(isinstance(e, dict) for e in events):
            raise InvalidRequest("saga events must be maps")
        if seq != len(record.history):
            raise InvalidRequest(f"saga {saga} has {len(record.history)} events, not {seq}: another "
                                 "orchestrator appended since")
        if len(record.history) + len(events) >= self.max_history:
            events = [{"event": "state", "state": STUCK, "reason": HISTORY_FULL}]
        for event in events:
            record.history.append({**event, "at": at})
            if event.get("event") == "state":
                record.state, record.reason = event["state"], str(event.get("reason", ""))
        record.updated_at = at
        if record.state in FINAL_STATES:
            del self.active[saga]
            self.finished.remember(saga, record)
        return {"state": record.state, "events": len(record.history)}
