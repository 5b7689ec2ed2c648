"""What the saga SDK tests share: serving services in the test's own trio run, and a broken barrier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import commit
from commit.saga import Barrier, Service, open_service, open_service_connections
from commit.saga.remote import ServiceConnections
from commit.tooling.localcluster import LocalCluster
from commit.transaction import Transaction


class RecordNothing(Barrier):
    """A broken barrier: it admits and runs every call but never writes a row."""

    def record(self, tx: Transaction, key: str, row: dict[str, Any]) -> None:
        return None


@asynccontextmanager
async def serving(
    cluster: LocalCluster, *services: Service, seed: dict[str, Any] | None = None
) -> AsyncIterator[tuple[commit.Database, ServiceConnections]]:
    """A client, its service connections, and ``services`` served, each with ``seed``'s keys put first."""
    async with commit.connect(cluster.config) as db, open_service_connections(db) as connections, \
            AsyncExitStack() as stack:
        for service in services:
            for name, value in (seed or {}).items():
                await db.put(f"{service.name}/{name}", value)
            await stack.enter_async_context(open_service(service, cluster.config))
        yield db, connections
