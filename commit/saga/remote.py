"""Calling a service from anywhere: an orchestrator node, a relay, a test, a client starting a saga.

A call's answer is always a reply dict (``{"ok": ...}`` or ``{"failed": {...}}``, docs/SAGAS.md), never
an exception for a network fault, and never later than ``timeout_s``: an orchestrator turns a failed
attempt into a retry or a compensation by its retry policy, and a call that hung would stall a whole
saga. A service that is not registered, cannot be reached or is too slow is ``Unavailable`` or
``Timeout``, both retryable: the barrier makes sending the same ``(saga, step, op)`` again safe.

Callers connect as clients (the client secret, ``ClusterConfig.rpc_settings()``), and expect the server
to be ``service:<name>``, so a port reused by another process is never mistaken for the service.

    async with open_service_connections(db) as services:     # a cache of connections, in a nursery
        reply = await services.call_step("inventory", saga="s1", step="reserve", op="action",
                                         handler="reserve", input={...}, timeout_s=5.0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from commit.client import Database
from commit.saga.barrier import Reply, failed
from commit.saga.registry import lookup
from consensus.errors import ClusterError, InvalidRequest, Unavailable
from consensus.rpc import RpcClient, run_rpc_client
from consensus.tasks import open_helper_nursery

STEP_METHOD = "saga.step"
EVENT_METHOD = "event.deliver"
REPLY_PREVIEW_CHARS = 200  # of a malformed reply, quoted in the failure that reports it


def server_id(service: str) -> str:
    """The id a service proves in the RPC handshake (``consensus.rpc``)."""
    return f"service:{service}"


def _checked(reply: Any) -> Reply:
    """A service's reply in the contract's shape, or a retryable failure naming what came instead."""
    if isinstance(reply, dict) and len(reply) == 1:
        if "ok" in reply:
            return reply
        detail = reply.get("failed")
        if (isinstance(detail, dict) and isinstance(detail.get("error"), str)
                and isinstance(detail.get("message"), str) and isinstance(detail.get("retryable"), bool)):
            return reply
    return failed("BadReply", f"the service answered {repr(reply)[:REPLY_PREVIEW_CHARS]}", True)


class ServiceConnections:
    """One connection per service, opened on first use and again once it closed (the service restarted)."""

    def __init__(self, db: Database, nursery: trio.Nursery) -> None:
        self.db = db
        self._nursery = nursery
        self._connections: dict[str, RpcClient] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    async def call_step(
        self, service: str, *, saga: str, step: str, op: str, handler: str, input: Any, timeout_s: float
    ) -> Reply:
        params = {"saga": saga, "step": step, "op": op, "handler": handler, "input": input}
        return await self.call(service, STEP_METHOD, params, timeout_s)

    async def deliver_event(self, service: str, event: dict[str, Any], timeout_s: float) -> Reply:
        return await self.call(service, EVENT_METHOD, {"event": event}, timeout_s)

    async def call(self, service: str, method: str, params: dict[str, Any], timeout_s: float) -> Reply:
        """``method`` at ``service``, answered within ``timeout_s`` whatever the network does."""
        with trio.move_on_after(timeout_s):
            try:
                conn = await self._connection(service)
                return _checked(await conn.call(method, params))
            except Unavailable as exc:
                return failed("Unavailable", exc.message, True)
            except ClusterError as exc:
                # A refused request (a bad parameter) fails the same way every time; anything else the
                # service said went wrong on its side.
                return failed(type(exc).__name__, exc.message, not isinstance(exc, InvalidRequest))
        return failed("Timeout", f"{service} did not answer {method} within {timeout_s}s", True)

    async def _connection(self, service: str) -> RpcClient:
        conn = self._connections.get(service)
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[service]:
            conn = self._connections.get(service)
            if conn is None or conn.closed:
                conn = self._connections[service] = await self._connect(service)
            return conn

    async def _connect(self, service: str) -> RpcClient:
        """A fresh connection to where ``service`` is registered; every way of failing is Unavailable."""
        try:
            address = await lookup(self.db, service)
        except ClusterError as exc:
            raise Unavailable(f"cannot look {service!r} up in the registry: {exc.message}") from None
        if address is None:
            raise Unavailable(f"service {service!r} is not registered")
        start = partial(run_rpc_client, address.host, address.port,
                        settings=self.db.config.rpc_settings(), expect_node=server_id(service))
        try:
            with trio.fail_after(self.db.config.timeouts.connect_s):
                return await self._nursery.start(start)
        except trio.TooSlowError:
            raise Unavailable(f"{service} at {address.host}:{address.port} did not connect in time") from None
        except ClusterError as exc:
            raise Unavailable(f"{service} at {address.host}:{address.port}: {exc.message}") from None


@asynccontextmanager
async def open_service_connections(db: Database) -> AsyncIterator[ServiceConnections]:
    """A connection cache whose connections live in its own nursery, closed when the block ends."""
    async with open_helper_nursery() as nursery:
        yield ServiceConnections(db, nursery)


async def call_step(
    db: Database, service: str, *, saga: str, step: str, op: str, handler: str, input: Any, timeout_s: float
) -> Reply:
    """One step call on a connection of its own; a caller making many keeps a ``ServiceConnections``."""
    async with open_service_connections(db) as services:
        return await services.call_step(service, saga=saga, step=step, op=op, handler=handler, input=input,
                                        timeout_s=timeout_s)


async def deliver_event(db: Database, service: str, event: dict[str, Any], timeout_s: float) -> Reply:
    """One event delivery on a connection of its own."""
    async with open_service_connections(db) as services:
        return await services.deliver_event(service, event, timeout_s)
