"""Sagas from the client: define one, start it, wait for it, and act on it as an operator.

    saga = Saga().step("order", service="order", action="create", compensation="reject", input={...})
    sagas = SagaClient(db)
    saga_id = await sagas.start(saga)
    final = await sagas.wait(saga_id)          # completed, compensated or stuck, with its history

The saga runs in the cluster, not here (Seata's users asked for exactly that, seata#5057): ``start``
returns once the coordinator group recorded it, and the client may go away. Starting the same id again
with the same definition is the same saga, so a ``start`` retried after a timeout never runs it twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import trio

from commit.client import Database
from commit.config import COORDINATOR_GROUP
from commit.protocols.saga import FINAL_STATES, STUCK
from commit.retry import poll_delays
from commit.protocols.saga_definition import COMPENSATABLE, SAGA, Step, to_wire
from consensus.errors import Timeout


class Saga:
    """A definition built step by step; ``mode="tcc"`` for Try / Confirm / Cancel steps."""

    def __init__(self, mode: str = SAGA) -> None:
        self.mode = mode
        self.steps: list[Step] = []

    def step(
        self, name: str, *, service: str, action: str, compensation: str | None = None, confirm: str | None = None,
        input: Any = None, kind: str = COMPENSATABLE, after: tuple[str, ...] | list[str] = (),
        timeout_s: float | None = None, retry: dict[str, Any] | None = None,
        compensation_retry: dict[str, Any] | None = None,
    ) -> Saga:
        """Add a step; ``after`` names the earlier steps it waits for (none: it may run at once)."""
        self.steps.append(Step(
            name=name, service=service, action=action, compensation=compensation, confirm=confirm, input=input,
            kind=kind, after=tuple(after), timeout_s=timeout_s, retry=retry or {},
            compensation_retry=compensation_retry or {},
        ))
        return self

    def definition(self) -> dict[str, Any]:
        return to_wire(self.mode, self.steps)


class SagaClient:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.db.call_group(COORDINATOR_GROUP, method, params)

    async def start(self, saga: Saga | dict[str, Any], saga_id: str | None = None) -> str:
        """Record the saga in the cluster, which then drives it; returns its id."""
        saga_id = saga_id or uuid.uuid4().hex
        definition = saga.definition() if isinstance(saga, Saga) else saga
        await self._call("saga.start", {"saga": saga_id, "definition": definition})
        return saga_id

    async def show(self, saga_id: str) -> dict[str, Any]:
        """Its state, definition and history (each event with the time it was recorded)."""
        return await self._call("saga.show", {"saga": saga_id})

    async def list(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {} if state is None else {"state": state}
        if limit is not None:
            params["limit"] = limit
        return (await self._call("saga.list", params))["sagas"]

    async def wait(self, saga_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Until the saga is completed, compensated or stuck; ``Timeout`` if it is still going after ``timeout_s``."""
        limit = timeout_s if timeout_s is not None else self.db.config.timeouts.client_deadline_s
        shown: dict[str, Any] = {"state": "not shown yet"}
        with trio.move_on_after(limit):
            for delay in poll_delays(self.db.config.timeouts):
                shown = await self.show(saga_id)
                if shown["state"] in FINAL_STATES or shown["state"] == STUCK:
                    return shown
                await trio.sleep(delay)
        raise Timeout(f"saga {saga_id} still {shown['state']} after {limit}s", maybe_applied=True)

    async def run(self, saga: Saga | dict[str, Any], saga_id: str | None = None,
                  timeout_s: float | None = None) -> dict[str, Any]:
        """``start`` then ``wait``."""
        return await self.wait(await self.start(saga, saga_id), timeout_s)

    async def retry(self, saga_id: str, step: str | None = None) -> str:
        """A stuck saga calls the op it is stuck on again, its attempts counted afresh."""
        return await self._operate("saga.retry", saga_id, step)

    async def skip(self, saga_id: str, step: str | None = None) -> str:
        """A stuck saga counts the op it is stuck on as done and goes on (Seata's skipAndForward)."""
        return await self._operate("saga.skip", saga_id, step)

    async def compensate(self, saga_id: str) -> str:
        """A running or stuck saga that has not passed its pivot compensates what it did."""
        return await self._operate("saga.compensate", saga_id, None)

    async def _operate(self, method: str, saga_id: str, step: str | None) -> str:
        params: dict[str, Any] = {"saga": saga_id}
        if step is not None:
            params["step"] = step
        return (await self._call(method, params))["state"]
