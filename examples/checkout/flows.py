"""One checkout, coordinated four ways over the same services and keys (``services``).

* ``checkout_saga``: an orchestrated saga. ``order`` (create, compensated by reject) first; ``inventory``
  (reserve / release) and ``payment`` (charge / refund) in parallel after it; ``shipping`` (schedule) is the
  pivot: once a courier is scheduled the checkout only goes forward; ``approve`` is retriable, tried until it
  succeeds. Failing before the pivot compensates what ran, in reverse order.
* ``checkout_tcc``: TCC. Every service Tries (create, reserve, hold, book), then every one Confirms (approve,
  confirm_reserve, capture, confirm_booking); a refused Try Cancels every Try (reject, release, release_hold,
  cancel_booking). Nothing is final until the Confirms, which is what an isolation-minded reader wants.
* ``start_choreographed``: no orchestrator: ``order.place`` emits OrderCreated and each service reacts to the
  previous one's event (``services.CHAIN``). The order ends APPROVED or REJECTED.
* ``checkout_atomic``: ONE store transaction over the same keys of all four services, under any commit
  protocol: a refusal aborts it and leaves nothing. The baseline the others are measured against.

The saga id of an order's checkout is the order's id, so starting it again (a client retrying after a lost
reply) is the same saga, and every order id must be new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import trio

from commit.client import Database
from commit.protocols.saga_definition import PIVOT, RETRIABLE, TCC, Retry
from commit.saga import Fail, call_step
from commit.saga.client import Saga, SagaClient
from commit.transaction import Transaction
from consensus.errors import Timeout
from examples.checkout import services as svc

SAGA_MODE, CHOREOGRAPHY, TCC_MODE, ATOMIC_PREFIX = "saga", "choreography", TCC, "atomic:"
COMPLETED, COMPENSATED = "completed", "compensated"

# A step's action is retried this often on a transient failure (a timeout, a service restarting) before
# the saga gives up on it; ``[sagas]`` sets how long it waits between attempts.
TRANSIENT_ATTEMPTS = 20
TRANSIENT_RETRY = {"maximum_attempts": TRANSIENT_ATTEMPTS}
UNTIL_DONE = {"maximum_attempts": 0}  # a retriable step, after the pivot: it must succeed in the end


@dataclass(frozen=True)
class Order:
    """One checkout's order; ``card``, ``qty`` and ``region`` and ``slow`` also inject failures (``services``)."""

    id: str
    sku: str
    qty: int
    amount: int
    customer: str
    region: str
    card: str = "ok"
    slow: dict[str, Any] | None = None

    def data(self) -> dict[str, Any]:
        """The order as every step's input and every event's payload."""
        return asdict(self)


@dataclass(frozen=True)
class Initial:
    """What ``seed`` put in: the totals the audit checks are conserved."""

    skus: dict[str, int]
    customers: dict[str, int]
    couriers: dict[str, int]

    @classmethod
    def of(cls, raw: Initial | Mapping[str, dict[str, int]]) -> Initial:
        """An ``Initial``, or a mapping with its three fields (a caller that kept its own seed dicts)."""
        if isinstance(raw, Initial):
            return raw
        return cls(dict(raw["skus"]), dict(raw["customers"]), dict(raw["couriers"]))


def checkout_saga(order: Order) -> Saga:
    data = order.data()
    return (
        Saga()
        .step("order", service=svc.ORDER, action="create", compensation="reject", input=data, retry=TRANSIENT_RETRY)
        .step("inventory", service=svc.INVENTORY, action="reserve", compensation="release", input=data,
              after=["order"], retry=TRANSIENT_RETRY)
        .step("payment", service=svc.PAYMENT, action="charge", compensation="refund", input=data,
              after=["order"], retry=TRANSIENT_RETRY)
        .step("shipping", service=svc.SHIPPING, action="schedule", kind=PIVOT, input=data,
              after=["inventory", "payment"], retry=TRANSIENT_RETRY)
        .step("approve", service=svc.ORDER, action="approve", kind=RETRIABLE, input=data, after=["shipping"],
              retry=UNTIL_DONE)
    )


def checkout_tcc(order: Order) -> Saga:
    data = order.data()
    return (
        Saga(TCC)
        .step("order", service=svc.ORDER, action="create", compensation="reject", confirm="approve", input=data,
              retry=TRANSIENT_RETRY)
        .step("inventory", service=svc.INVENTORY, action="reserve", compensation="release",
              confirm="confirm_reserve", input=data, after=["order"], retry=TRANSIENT_RETRY)
        .step("payment", service=svc.PAYMENT, action="hold", compensation="release_hold", confirm="capture",
              input=data, after=["order"], retry=TRANSIENT_RETRY)
        .step("shipping", service=svc.SHIPPING, action="book", compensation="cancel_booking",
              confirm="confirm_booking", input=data, after=["order"], retry=TRANSIENT_RETRY)
    )


def _placing_policy(db: Database) -> Retry:
    """A client placing an order retries as an orchestrator would, by the cluster's ``[sagas]`` defaults."""
    sagas = db.config.sagas
    return Retry(initial_interval_s=sagas.initial_interval_s, backoff_coefficient=sagas.backoff_coefficient,
                 maximum_interval_s=max(sagas.maximum_interval_s, sagas.initial_interval_s),
                 maximum_attempts=TRANSIENT_ATTEMPTS)


async def start_choreographed(db: Database, order: Order) -> dict[str, Any]:
    """Place the order (``order.place``, saga id = order id); the events do the rest.

    Returns the service's reply: ``{"ok": ...}`` once the order and its OrderCreated are committed, or the
    final ``{"failed": ...}`` (a refusal, or transient failures until the policy gave up). Placing again is
    harmless: the barrier answers a repeat with the first reply.
    """
    policy = _placing_policy(db)
    attempts = 0
    while True:
        attempts += 1
        reply = await call_step(db, svc.ORDER, saga=order.id, step="place", op="action", handler="place",
                                input=order.data(), timeout_s=db.config.sagas.attempt_timeout_s)
        failed = reply.get("failed")
        if failed is None or not policy.allows(attempts, failed["error"], failed["retryable"]):
            return reply
        await trio.sleep(policy.delay_after(attempts))


async def wait_choreographed(db: Database, order_id: str, timeout_s: float) -> str:
    """``completed`` once the order is APPROVED, ``compensated`` once REJECTED (the last event of each chain)."""
    with trio.move_on_after(timeout_s):
        while True:
            record = (await db.get(svc.data_key(svc.ORDER, svc.order_name(order_id)))).value
            status = record.get("status") if isinstance(record, dict) else None
            if status == svc.APPROVED:
                return COMPLETED
            if status == svc.REJECTED:
                return COMPENSATED
            await trio.sleep(db.config.timeouts.status_poll_s)
    raise Timeout(f"the choreographed checkout of {order_id} did not end within {timeout_s}s", maybe_applied=True)


async def checkout_atomic(db: Database, order: Order, protocol: str) -> str:
    """The whole checkout in ONE transaction under ``protocol``: ``completed``, or the refusal's name.

    The services' own rules run on each service's keys in the one transaction; a refusal
    raises out of the body, so ``db.run`` never commits it and nothing of the checkout is left.
    """
    data = order.data()

    async def body(tx: Transaction) -> None:
        orders = svc.ServiceData(tx, svc.ORDER)
        await svc.create_order(orders, data)
        await svc.take(svc.ServiceData(tx, svc.INVENTORY), svc.STOCK, data, svc.RESERVED)
        await svc.charge_money(svc.ServiceData(tx, svc.PAYMENT), data, svc.CHARGED)
        await svc.take(svc.ServiceData(tx, svc.SHIPPING), svc.COURIERS, data, svc.SCHEDULED)
        await svc.approve_order(orders, data)

    try:
        await db.run(body, protocol=protocol)
    except Fail as refusal:
        return refusal.error
    return COMPLETED


async def seed(db: Database, skus: dict[str, int], customers: dict[str, int], couriers: dict[str, int]) -> Initial:
    """Stock per sku, balance per customer and couriers per region, in one transaction; returns them."""
    async def body(tx: Transaction) -> None:
        for resource, values in ((svc.STOCK, skus), (svc.MONEY, customers), (svc.COURIERS, couriers)):
            for name, value in values.items():
                tx.put(svc.data_key(resource.service, f"{resource.counter}/{name}"), value)

    await db.run(body)
    return Initial(dict(skus), dict(customers), dict(couriers))


async def run_checkout(db: Database, mode: str, order: Order, timeout_s: float) -> str:
    """Run ``order``'s checkout in ``mode`` to its end and name it.

    ``saga`` and ``tcc``: the saga's final state (``completed``, ``compensated`` or ``stuck``);
    ``choreography``: ``completed`` or ``compensated``, or the refusal's name if the order was not placed;
    ``atomic:<protocol>``: ``completed`` or the refusal's name. ``Timeout`` if it has not ended in time.
    """
    if mode in (SAGA_MODE, TCC_MODE):
        saga = checkout_saga(order) if mode == SAGA_MODE else checkout_tcc(order)
        return (await SagaClient(db).run(saga, order.id, timeout_s))["state"]
    if mode == CHOREOGRAPHY:
        with trio.move_on_after(timeout_s) as placing:
            reply = await start_choreographed(db, order)
        if placing.cancelled_caught:
            raise Timeout(f"order {order.id} was not placed within {timeout_s}s", maybe_applied=True)
        if "failed" in reply:
            return str(reply["failed"]["error"])
        return await wait_choreographed(db, order.id, max(0.0, placing.deadline - trio.current_time()))
    if mode.startswith(ATOMIC_PREFIX):
        return await checkout_atomic(db, order, mode.removeprefix(ATOMIC_PREFIX))
    raise ValueError(f"unknown checkout mode {mode!r}: saga, choreography, tcc or atomic:<protocol>")
