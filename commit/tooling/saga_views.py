"""Sagas for operators: the list as a table, one saga's history as a timeline, and the commands on it.

The timeline is Temporal's event history read as a story: one line per event, the time since the saga
started, and compensations marked, so a stuck saga shows which call failed how often and why.
"""

from __future__ import annotations

from typing import Any

from commit.client import connect
from commit.config import ClusterConfig
from commit.protocols.saga import COMPENSATION
from commit.saga.client import SagaClient

SAGA_COLUMNS = ("saga", "state", "mode", "steps", "events", "age_s", "reason")
TIMELINE_COLUMNS = ("t_s", "event", "step", "op", "detail")


async def saga_request(config: ClusterConfig, op: str, saga_id: str | None, step: str | None,
                       state: str | None) -> Any:
    """``op`` (list, show, retry, skip, compensate) through the client, which finds the group's leader."""
    async with connect(config) as db:
        sagas = SagaClient(db)
        if op == "list":
            return await sagas.list(state)
        assert saga_id is not None
        if op == "show":
            return await sagas.show(saga_id)
        if op == "compensate":
            return {"saga": saga_id, "state": await sagas.compensate(saga_id)}
        act = sagas.retry if op == "retry" else sagas.skip
        return {"saga": saga_id, "state": await act(saga_id, step)}


def list_rows(rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    return [{**r, "age_s": round(now - r["started_at"], 1), "reason": r["reason"] or None} for r in rows]


def timeline_rows(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per history event; a compensation's rows say so."""
    start = shown["started_at"]
    rows = []
    for event in shown["history"]:
        kind = event.get("event")
        detail = {
            "attempt": lambda e: f"attempt {e['attempt']}",
            "succeeded": lambda e: f"-> {e.get('result')!r:.60}",
            "failed": lambda e: f"{e['error']}: {e['message']:.60}{'' if e['retryable'] else ' (not retryable)'}",
            "state": lambda e: f"{e['state']}: {e.get('reason', '')}",
            "operator": lambda e: f"operator: {e['command']}",
        }.get(kind, lambda e: "")(event)
        op = event.get("op")
        rows.append({"t_s": round(event.get("at", start) - start, 3), "event": kind, "step": event.get("step"),
                     "op": f"{op} (undo)" if op == COMPENSATION else op, "detail": detail or None})
    return rows
