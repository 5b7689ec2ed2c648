"""The checkout's four services: order, inventory, payment and shipping.

Each service owns its keys (``<service>/...``, through its ``StepContext``) and changes them only in its
handlers, each of which runs in ONE store transaction with its barrier row and the events it emits
(``commit.saga.service``). The same business rules serve every way ``flows`` coordinates a checkout:

* orchestration: ``order.create`` -> ``inventory.reserve`` and ``payment.charge`` -> ``shipping.schedule``
  (the pivot) -> ``order.approve`` (retriable); compensations ``reject``, ``release``, ``refund``;
* TCC: Try ``create``/``reserve``/``hold``/``book``, Confirm ``approve``/``confirm_reserve``/``capture``/
  ``confirm_booking``, Cancel ``reject``/``release``/``release_hold``/``cancel_booking``;
* choreography: ``order.place`` emits OrderCreated and each service reacts to the event before it
  (``CHAIN`` lists them in causal order), compensating on the failure events;
* one atomic transaction: ``flows.checkout_atomic`` runs the rules below on each service's keys
  (``ServiceData``) in one transaction.

A rule raises ``Fail`` before it writes anything, so a choreography consumer can turn the refusal into its
failure event in the same transaction and an atomic checkout can abort on it.

Data (relative to the service's prefix):

* order: ``orders/<id>`` = ``{status: PENDING|APPROVED|REJECTED, sku, qty, amount, customer, region}``;
* inventory: ``stock/<sku>`` int, ``reservations/<id>`` = ``{qty, sku, state: reserved|confirmed|released, at}``;
* payment: ``balance/<customer>`` int,
  ``charges/<id>`` = ``{amount, customer, state: charged|held|captured|refunded, at}``;
* shipping: ``couriers/<region>`` int,
  ``shipments/<id>`` = ``{couriers: 1, region, state: scheduled|booked|confirmed|cancelled, at}``.

The semantic lock (Richardson, Microservices Patterns ch. 4): an order is PENDING from ``create`` until its
checkout ends, a second ``create`` of the same id is refused (``OrderExists``), and ``amend`` refuses a
PENDING order with the retryable ``OrderPending``, so whoever wants to change it waits for the checkout.

Order-tolerance beyond the barrier: the barrier dedups a ``saga.step`` by ``(saga, step, op)`` and fences an
action that comes after its compensation, but dedups an event only by its id. So a compensation that finds
nothing to undo leaves a record in its final state (a tombstone of zero units), and an action that finds a
record for its order already changes nothing (``AlreadyHandled``): a late OrderCreated after a PaymentFailed
reserves nothing that nobody would release.

Failure injection rides on the order: ``card = "declined"``, a ``qty`` above the stock, a ``region`` without
couriers, and ``slow = {"service": name, "s": seconds, "action": optional handler name}``: the first call of
that service's forward action(s) for the order sleeps, as a service that times out. The orchestrator's
attempt timeout (or the relay's) then calls again, the second call does not sleep and commits, and the
first call's commit meets the second's barrier row, so it applies nothing.

    python -m examples.checkout.services inventory --config cluster.toml [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from commit.saga import EventContext, Fail, Service, StepContext, run_service
from commit.transaction import Transaction

ORDER, INVENTORY, PAYMENT, SHIPPING = "order", "inventory", "payment", "shipping"

PENDING, APPROVED, REJECTED = "PENDING", "APPROVED", "REJECTED"
RESERVED, CONFIRMED, RELEASED = "reserved", "confirmed", "released"
CHARGED, HELD, CAPTURED, REFUNDED = "charged", "held", "captured", "refunded"
SCHEDULED, BOOKED, CANCELLED = "scheduled", "booked", "cancelled"  # and CONFIRMED
DECLINED_CARD = "declined"

# Business refusals (``Fail``): final, the saga compensates.
ORDER_EXISTS, NO_SUCH_ORDER, ORDER_REJECTED = "OrderExists", "NoSuchOrder", "OrderRejected"
OUT_OF_STOCK, CARD_DECLINED, NO_COURIER = "OutOfStock", "CardDeclined", "NoCourier"
NOT_TRIED = "NotTried"

# The choreography's events, in causal order.
ORDER_CREATED = "OrderCreated"
STOCK_RESERVED, STOCK_FAILED = "StockReserved", "StockFailed"
PAYMENT_DONE, PAYMENT_FAILED = "PaymentDone", "PaymentFailed"
SHIPPED, SHIPPING_FAILED = "Shipped", "ShippingFailed"
PAYMENT_REFUNDED, STOCK_RELEASED = "PaymentRefunded", "StockReleased"
CHAIN = (ORDER_CREATED, STOCK_RESERVED, STOCK_FAILED, PAYMENT_DONE, PAYMENT_FAILED, SHIPPED, SHIPPING_FAILED,
         PAYMENT_REFUNDED, STOCK_RELEASED)

log = logging.getLogger(__name__)

OrderData = dict[str, Any]  # ``flows.Order`` as plain msgpack data
ORDER_FIELDS = ("sku", "qty", "amount", "customer", "region")  # what an order's record keeps of it


def data_key(service: str, name: str) -> str:
    """The store key of a service's data name, as a ``StepContext`` of that service writes it."""
    return f"{service}/{name}"


def order_name(order_id: str) -> str:
    return f"orders/{order_id}"


class Data(Protocol):
    """What the rules need of a service's keys: a ``StepContext``, or ``ServiceData`` in one transaction."""

    async def get(self, name: str, default: Any = None) -> Any: ...

    def put(self, name: str, value: Any) -> None: ...


class ServiceData:
    """A service's keys in a transaction of the caller's own (an atomic checkout), as a handler sees them."""

    def __init__(self, tx: Transaction, service: str) -> None:
        self.tx = tx
        self.service = service

    async def get(self, name: str, default: Any = None) -> Any:
        seen = await self.tx.get(data_key(self.service, name))
        return seen.value if seen.exists else default

    def put(self, name: str, value: Any) -> None:
        self.tx.put(data_key(self.service, name), value)


class OrderPending(Exception):
    """The semantic lock: the order's checkout is still going. Not a ``Fail``, so it is retryable."""


class AlreadyHandled(Exception):
    """A record for this order exists: a late or repeated action changes nothing.

    Not a ``Fail``, so retryable: in a saga step it means a duplicate attempt of this very step committed
    while this one ran (this attempt read the barrier row before that commit and the record after it), and
    the next attempt meets that barrier row and answers its result. As a ``Fail`` it would be replied as
    final and compensate a step that in fact succeeded (the SDK replies a ``Fail`` without validating the
    reads it was decided on).
    """


# -- failure injection ---------------------------------------------------------------------------


class SlowOnce:
    """The ``slow`` injection of one service: each forward action's first call for an order sleeps.

    Remembered in the process, not the store: a restarted service is slow once more, as a cold one is.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.slept: set[tuple[str, str]] = set()

    async def maybe(self, order: OrderData, action: str) -> None:
        slow = order.get("slow")
        if not isinstance(slow, dict) or slow.get("service") != self.service:
            return
        if slow.get("action", action) != action or (order["id"], action) in self.slept:
            return
        self.slept.add((order["id"], action))  # before sleeping: the retry that overtakes this call must not sleep
        log.info("%s: %s of %s sleeps %ss (failure injection)", self.service, action, order["id"], slow["s"])
        await trio.sleep(slow["s"])


# -- the order: a record with a status, and the semantic lock ----------------------------------------


async def create_order(ctx: Data, order: OrderData) -> dict[str, Any]:
    if await ctx.get(order_name(order["id"])) is not None:
        raise Fail(ORDER_EXISTS, f"order {order['id']} exists already")
    ctx.put(order_name(order["id"]), {"status": PENDING, **{f: order[f] for f in ORDER_FIELDS}})
    return {"order": order["id"], "status": PENDING}


async def approve_order(ctx: Data, order: OrderData) -> str:
    record = await ctx.get(order_name(order["id"]))
    if record is None:
        raise Fail(NO_SUCH_ORDER, f"order {order['id']} was never created")
    ctx.put(order_name(order["id"]), {**record, "status": APPROVED})
    return APPROVED


async def reject_order(ctx: Data, order: OrderData) -> str:
    """REJECTED; an order that was never created gets a REJECTED record, so a late ``place`` is refused."""
    record = await ctx.get(order_name(order["id"]))
    if record is None:
        record = {f: order[f] for f in ORDER_FIELDS}
    ctx.put(order_name(order["id"]), {**record, "status": REJECTED})
    return REJECTED


async def amend_order(ctx: Data, amendment: dict[str, Any]) -> dict[str, Any]:
    """Change an order's qty: refused while the order is PENDING (the semantic lock), or once it is REJECTED."""
    record = await ctx.get(order_name(amendment["order"]))
    if record is None:
        raise Fail(NO_SUCH_ORDER, f"order {amendment['order']} was never created")
    if record["status"] == PENDING:
        raise OrderPending(f"order {amendment['order']} is PENDING: its checkout is still going")
    if record["status"] == REJECTED:
        raise Fail(ORDER_REJECTED, f"order {amendment['order']} was rejected")
    ctx.put(order_name(amendment["order"]), {**record, "qty": amendment["qty"]})
    return {"order": amendment["order"], "qty": amendment["qty"]}


# -- inventory, payment, shipping: a counter one order takes units of, and a record per order ----------


@dataclass(frozen=True)
class Resource:
    """What one order takes from a service: ``units(order)`` of the counter named by ``order[by]``."""

    service: str
    counter: str  # "stock": the counter of sku s is stock/s
    by: str  # the order field naming the counter
    records: str  # "reservations": order i's record is reservations/i
    units_field: str  # the record's field holding the units taken
    units: Callable[[OrderData], int]
    shortage: str  # the refusal when the counter is short

    def counter_name(self, order: OrderData) -> str:
        return f"{self.counter}/{order[self.by]}"

    def record_name(self, order_id: str) -> str:
        return f"{self.records}/{order_id}"


STOCK = Resource(INVENTORY, "stock", "sku", "reservations", "qty", lambda o: int(o["qty"]), OUT_OF_STOCK)
MONEY = Resource(PAYMENT, "balance", "customer", "charges", "amount", lambda o: int(o["amount"]), CARD_DECLINED)
COURIERS = Resource(SHIPPING, "couriers", "region", "shipments", "couriers", lambda o: 1, NO_COURIER)


async def take(ctx: Data, resource: Resource, order: OrderData, state: str) -> dict[str, Any]:
    """Take the order's units and record them in ``state``; refused when short or already handled."""
    if await ctx.get(resource.record_name(order["id"])) is not None:
        raise AlreadyHandled(f"{resource.records}/{order['id']} exists already")
    have, want = await ctx.get(resource.counter_name(order), 0), resource.units(order)
    if have < want:
        raise Fail(resource.shortage, f"{want} wanted, {have} left of {resource.counter_name(order)}")
    ctx.put(resource.counter_name(order), have - want)
    ctx.put(resource.record_name(order["id"]),
            {resource.units_field: want, resource.by: order[resource.by], "state": state, "at": time.time()})
    return {resource.units_field: want, resource.by: order[resource.by]}


async def give_back(ctx: Data, resource: Resource, order: OrderData, state: str) -> dict[str, Any]:
    """Return what the record says was taken, once; with no record, leave a tombstone of zero units."""
    record = await ctx.get(resource.record_name(order["id"]))
    if record is None:
        record = {resource.units_field: 0, resource.by: order[resource.by], "state": state, "at": time.time()}
        ctx.put(resource.record_name(order["id"]), record)
        return {"returned": 0}
    if record["state"] == state:
        return {"returned": 0}
    counter = f"{resource.counter}/{record[resource.by]}"
    ctx.put(counter, await ctx.get(counter, 0) + record[resource.units_field])
    ctx.put(resource.record_name(order["id"]), {**record, "state": state, "at": time.time()})
    return {"returned": record[resource.units_field]}


async def settle(ctx: Data, resource: Resource, order: OrderData, state: str) -> str:
    """TCC's Confirm: what the Try took is kept for good."""
    record = await ctx.get(resource.record_name(order["id"]))
    if record is None:
        raise Fail(NOT_TRIED, f"{resource.records}/{order['id']} was never taken")
    ctx.put(resource.record_name(order["id"]), {**record, "state": state})
    return state


async def charge_money(ctx: Data, order: OrderData, state: str) -> dict[str, Any]:
    if order.get("card") == DECLINED_CARD:
        raise Fail(CARD_DECLINED, f"the card of order {order['id']} is declined")
    return await take(ctx, MONEY, order, state)


# -- the services ----------------------------------------------------------------------------------

order = Service(ORDER)
inventory = Service(INVENTORY)
payment = Service(PAYMENT)
shipping = Service(SHIPPING)
SERVICES = {s.name: s for s in (order, inventory, payment, shipping)}

_order_slow, _inventory_slow = SlowOnce(ORDER), SlowOnce(INVENTORY)
_payment_slow, _shipping_slow = SlowOnce(PAYMENT), SlowOnce(SHIPPING)


async def react(ctx: EventContext, forward: Callable[[], Awaitable[Any]], succeeded: str, failed: str) -> None:
    """A choreography step: run ``forward`` and emit ``succeeded``, or turn its refusal into ``failed``.

    Both commit (with the event's barrier row), so the reads the outcome was decided on are validated.
    """
    data = ctx.event["data"]
    try:
        await forward()
    except AlreadyHandled:
        return  # the first event for this order already went on, or a compensation left its tombstone
    except Fail as refusal:
        ctx.emit(failed, {**data, "error": refusal.error})
        return
    ctx.emit(succeeded, data)


@order.action("create")
async def create(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _order_slow.maybe(data, "create")
    return await create_order(ctx, data)


@order.action("approve")
async def approve(ctx: StepContext, data: OrderData) -> str:
    await _order_slow.maybe(data, "approve")
    return await approve_order(ctx, data)


@order.confirm("approve")
async def approve_confirm(ctx: StepContext, data: OrderData, tried: Any) -> str:
    return await approve_order(ctx, data)


@order.compensation("reject")
async def reject(ctx: StepContext, data: OrderData, created: Any) -> str:
    return await reject_order(ctx, data)


@order.action("amend")
async def amend(ctx: StepContext, amendment: dict[str, Any]) -> dict[str, Any]:
    return await amend_order(ctx, amendment)


@order.action("place")
async def place(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    """The choreography's start: the PENDING order and OrderCreated, in one transaction."""
    await _order_slow.maybe(data, "place")
    created = await create_order(ctx, data)
    ctx.emit(ORDER_CREATED, {"order": data})
    return created


@order.on(SHIPPED)
async def on_shipped(ctx: EventContext, event: dict[str, Any]) -> None:
    await approve_order(ctx, event["data"]["order"])


@order.on(STOCK_FAILED)
async def on_stock_failed(ctx: EventContext, event: dict[str, Any]) -> None:
    await reject_order(ctx, event["data"]["order"])


@order.on(STOCK_RELEASED)
async def on_stock_released(ctx: EventContext, event: dict[str, Any]) -> None:
    await reject_order(ctx, event["data"]["order"])


@inventory.action("reserve")
async def reserve(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _inventory_slow.maybe(data, "reserve")
    return await take(ctx, STOCK, data, RESERVED)


@inventory.confirm("confirm_reserve")
async def confirm_reserve(ctx: StepContext, data: OrderData, reserved: Any) -> str:
    return await settle(ctx, STOCK, data, CONFIRMED)


@inventory.compensation("release")
async def release(ctx: StepContext, data: OrderData, reserved: Any) -> dict[str, Any]:
    return await give_back(ctx, STOCK, data, RELEASED)


@inventory.on(ORDER_CREATED)
async def on_order_created(ctx: EventContext, event: dict[str, Any]) -> None:
    data = event["data"]["order"]
    await _inventory_slow.maybe(data, "reserve")
    await react(ctx, lambda: take(ctx, STOCK, data, RESERVED), STOCK_RESERVED, STOCK_FAILED)


async def _release_and_tell(ctx: EventContext, event: dict[str, Any]) -> None:
    await give_back(ctx, STOCK, event["data"]["order"], RELEASED)
    ctx.emit(STOCK_RELEASED, event["data"])


inventory.on(PAYMENT_FAILED)(_release_and_tell)
inventory.on(PAYMENT_REFUNDED)(_release_and_tell)


@payment.action("charge")
async def charge(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _payment_slow.maybe(data, "charge")
    return await charge_money(ctx, data, CHARGED)


@payment.compensation("refund")
async def refund(ctx: StepContext, data: OrderData, charged: Any) -> dict[str, Any]:
    return await give_back(ctx, MONEY, data, REFUNDED)


@payment.action("hold")
async def hold(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _payment_slow.maybe(data, "hold")
    return await charge_money(ctx, data, HELD)


@payment.confirm("capture")
async def capture(ctx: StepContext, data: OrderData, held: Any) -> str:
    return await settle(ctx, MONEY, data, CAPTURED)


@payment.compensation("release_hold")
async def release_hold(ctx: StepContext, data: OrderData, held: Any) -> dict[str, Any]:
    return await give_back(ctx, MONEY, data, REFUNDED)


@payment.on(STOCK_RESERVED)
async def on_stock_reserved(ctx: EventContext, event: dict[str, Any]) -> None:
    data = event["data"]["order"]
    await _payment_slow.maybe(data, "charge")
    await react(ctx, lambda: charge_money(ctx, data, CHARGED), PAYMENT_DONE, PAYMENT_FAILED)


@payment.on(SHIPPING_FAILED)
async def on_shipping_failed(ctx: EventContext, event: dict[str, Any]) -> None:
    await give_back(ctx, MONEY, event["data"]["order"], REFUNDED)
    ctx.emit(PAYMENT_REFUNDED, event["data"])


@shipping.action("schedule")
async def schedule(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _shipping_slow.maybe(data, "schedule")
    return await take(ctx, COURIERS, data, SCHEDULED)


@shipping.action("book")
async def book(ctx: StepContext, data: OrderData) -> dict[str, Any]:
    await _shipping_slow.maybe(data, "book")
    return await take(ctx, COURIERS, data, BOOKED)


@shipping.confirm("confirm_booking")
async def confirm_booking(ctx: StepContext, data: OrderData, booked: Any) -> str:
    return await settle(ctx, COURIERS, data, CONFIRMED)


@shipping.compensation("cancel_booking")
async def cancel_booking(ctx: StepContext, data: OrderData, booked: Any) -> dict[str, Any]:
    return await give_back(ctx, COURIERS, data, CANCELLED)


@shipping.on(PAYMENT_DONE)
async def on_payment_done(ctx: EventContext, event: dict[str, Any]) -> None:
    data = event["data"]["order"]
    await _shipping_slow.maybe(data, "schedule")
    await react(ctx, lambda: take(ctx, COURIERS, data, SCHEDULED), SHIPPED, SHIPPING_FAILED)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve one checkout service until interrupted.")
    parser.add_argument("name", choices=sorted(SERVICES))
    parser.add_argument("--config", default="cluster.toml", help="the cluster's cluster.toml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the registry tells callers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_service(SERVICES[args.name], args.config, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
