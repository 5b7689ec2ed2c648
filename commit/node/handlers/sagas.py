"""Sagas as clients and operators ask for them; every method goes to the coordinator group's leader.

    saga.start       {saga, definition}      -> {saga, state, new}
    saga.list        {state?, limit?}        -> {sagas: [summary...]}   newest first, at most max_listed_sagas
    saga.show        {saga}                  -> {saga, state, reason, definition, history}
    saga.retry       {saga, step?}           -> {saga, state}   a stuck saga calls its op again
    saga.skip        {saga, step?}           -> {saga, state}   ... counts it as done and goes on
    saga.compensate  {saga}                  -> {saga, state}   ... or one before its pivot compensates

A definition (``commit.protocols.saga_definition``) is checked whole before it is recorded, and packs to at
most ``sagas.max_definition_bytes`` (every replica keeps it for the saga's life); a saga id
started twice with the same definition is the same saga (a retried start is harmless), with another is
``invalid_request``. ``saga.start`` answers once the saga is recorded, not when it ends: clients wait
with ``saga.show`` (``commit.saga.client``).
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import trio

from commit.config import COORDINATOR_GROUP
from commit.node.handlers.base import Handler, Handlers
from commit.node.sagas import SagaOrchestrator
from commit.protocols.saga import COMPENSATE, RETRY, SAGA_STATES, SKIP, Resume
from commit.protocols.saga_definition import check_name, parse_definition
from consensus.errors import InvalidRequest


class SagaMethods(Handlers):
    def methods(self) -> dict[str, Handler]:
        return {"saga.start": self.start, "saga.list": self.list, "saga.show": self.show,
                "saga.retry": self.operator(RETRY), "saga.skip": self.operator(SKIP),
                "saga.compensate": self.operator(COMPENSATE)}

    def orchestrator(self) -> SagaOrchestrator:
        self.leading(COORDINATOR_GROUP)
        orchestrator = self.node.sagas
        assert orchestrator is not None  # every node that hosts the coordinator group runs one
        return orchestrator

    def saga_id(self, params: dict[str, Any]) -> str:
        return check_name(params.get("saga"), "saga", self.config.sagas)

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        saga = self.saga_id(params)
        definition = params.get("definition")
        cap = self.config.sagas.max_definition_bytes
        if len(msgpack.packb(definition)) > cap:
            raise InvalidRequest(f"a saga definition packs to more than {cap} bytes (sagas.max_definition_bytes)")
        parse_definition(definition, self.config.sagas)
        orchestrator = self.orchestrator()
        result = await self.propose(orchestrator.group, ("saga.start", saga, definition, time.time()))
        if result["new"]:
            orchestrator.start_run(saga, Resume(now=trio.current_time()))
        return dict(result)

    async def list(self, params: dict[str, Any]) -> dict[str, Any]:
        state = params.get("state")
        if state is not None and state not in SAGA_STATES:
            raise InvalidRequest(f"state must be one of {SAGA_STATES}, got {state!r:.40}")
        cap = self.config.sagas.max_listed_sagas
        limit = params.get("limit", cap)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= cap:
            raise InvalidRequest(f"limit must be an integer from 1 to {cap} (sagas.max_listed_sagas)")
        records = self.orchestrator().records
        rows = [r.summary(s) for s, r in (*records.active.items(), *records.finished.items())]
        rows = [r for r in rows if state is None or r["state"] == state]
        rows.sort(key=lambda r: r["started_at"], reverse=True)
        return {"sagas": rows[:limit]}

    async def show(self, params: dict[str, Any]) -> dict[str, Any]:
        saga = self.saga_id(params)
        record = self.orchestrator().records.get(saga)
        if record is None:
            raise InvalidRequest(f"no saga {saga} (never started, or finished and forgotten)")
        return {**record.summary(saga), "definition": record.definition, "history": record.history}

    def operator(self, command: str) -> Handler:
        async def operate(params: dict[str, Any]) -> dict[str, Any]:
            saga = self.saga_id(params)
            step = params.get("step")
            if step is not None:
                check_name(step, "step", self.config.sagas)
            state = await self.orchestrator().operate(saga, command, step)
            return {"saga": saga, "state": state}

        return operate
