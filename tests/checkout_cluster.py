"""The checkout tests' cluster: three real nodes and the four services as real processes, for one module.

Every test works on goods, customers and regions of its own (``Shop``), so the tests share the cluster
and still audit their own totals. A test that kills a node or a service starts it again before it ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

import commit
from commit.tooling.localcluster import LocalCluster
from examples.checkout import services as svc
from examples.checkout.cluster import ServiceProcesses, checkout_cluster
from examples.checkout.flows import Initial, Order, seed

STOCK, BALANCE, COURIERS = 5, 1_000, 5
QTY, PRICE = 1, 40
LOG_POLL_S = 0.02
# Quicker than the default: a saga's end is seen sooner by ``SagaClient.wait`` (and commit outcomes by db.run).
TEST_TIMEOUTS = {"status_poll_s": 0.05}


@dataclass
class CheckoutEnv:
    cluster: LocalCluster
    services: ServiceProcesses


def started_env(root: Path) -> Iterator[CheckoutEnv]:
    """Nodes up and every service registered; everything killed when the generator is closed."""
    cluster = checkout_cluster(root, timeouts=TEST_TIMEOUTS)
    services = ServiceProcesses(cluster.config, root)
    try:
        cluster.start_all()
        trio.run(cluster.wait_ready)
        services.start_all()
        trio.run(wait_serving, cluster, services)
        yield CheckoutEnv(cluster, services)
    finally:
        services.stop()
        cluster.stop()


async def wait_serving(cluster: LocalCluster, services: ServiceProcesses) -> None:
    async with commit.connect(cluster.config) as db:
        await services.wait_serving(db)


class Shop:
    """A test's own sku, customer and regions (one with no courier), and its orders' ids."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sku, self.customer = f"{tag}-sku", f"{tag}-customer"
        self.region, self.nowhere = f"{tag}-region", f"{tag}-nowhere"
        self._ids = itertools.count(1)

    async def seed(self, db: commit.Database, stock: int = STOCK, balance: int = BALANCE,
                   couriers: int = COURIERS) -> Initial:
        return await seed(db, {self.sku: stock}, {self.customer: balance}, {self.region: couriers, self.nowhere: 0})

    def order(self, **changes: Any) -> Order:
        """A new order that succeeds unless ``changes`` say otherwise."""
        plain = Order(id=f"{self.tag}-{next(self._ids)}", sku=self.sku, qty=QTY, amount=PRICE,
                      customer=self.customer, region=self.region)
        return replace(plain, **changes)


async def wait_sleeping(services: ServiceProcesses, service: str, action: str, order_id: str,
                        timeout_s: float, times: int = 1) -> None:
    """Until ``service`` logged ``times`` that the ``slow`` injection holds ``action`` of the order (its log
    outlives a restart, and each process is slow once): then it is mid-action."""
    mark = f"{service}: {action} of {order_id} sleeps"
    with trio.move_on_after(timeout_s):
        while services.log_path(service).read_text(errors="replace").count(mark) < times:
            await trio.sleep(LOG_POLL_S)
        return
    raise AssertionError(f"{service} did not start {action} of {order_id} {times} times")


def slow(service: str, action: str, seconds: float) -> dict[str, Any]:
    """The ``slow`` injection for one action of one service (``services.SlowOnce``)."""
    assert service in svc.SERVICES
    return {"service": service, "action": action, "s": seconds}
