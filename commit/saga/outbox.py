"""Choreography: events written in the handler's own transaction, and a relay that delivers them.

This is the transactional outbox (Chris Richardson, microservices.io "Transactional outbox"; Eventuate
Tram's message relay). ``StepContext.emit`` only buffers; when the handler returns, ``write`` puts each
event at ``<service>/_outbox/<n>`` and moves ``<service>/_outbox/head`` to the last ``n`` in the same
transaction as the handler's effects and its barrier row, so an event exists if and only if the effect
that caused it committed. Every emitting transaction reads and writes ``head``, so two of them cannot
commit concurrently: event numbers follow commit order.

The ``Relay`` (one task in ``open_service``'s nursery) delivers events ``relayed + 1 .. head`` in order,
each to every service subscribed to its type, and only then moves ``<service>/_outbox/relayed``. It
delivers at least once: after a crash between a delivery and the move of ``relayed`` it delivers again,
and the consumer's barrier (``Branch.of_event``) turns that into once in effect (Eventuate's idempotent
consumer). A delivery that fails retryably is sent again after a capped, jittered backoff; a subscriber
that never answers holds back every later event of this service, which is the price of the order.
A non-retryable failure is the consumer's final answer (a business refusal, or an event it cannot
parse): sending it again would block the stream for ever, so the relay logs it and moves on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from commit.client import Database
from commit.config import Timeouts
from commit.saga.registry import subscribers
from commit.saga.remote import ServiceConnections
from commit.transaction import Transaction
from consensus.errors import ClusterError

log = logging.getLogger(__name__)

HEAD = "head"
RELAYED = "relayed"

T = TypeVar("T")


def outbox_key(service: str, part: str | int) -> str:
    return f"{service}/_outbox/{part}"


def event_id(service: str, number: int) -> str:
    return f"{service}:{number}"


@dataclass(frozen=True)
class Emitted:
    """An event a handler emitted, held until its transaction writes the outbox."""

    type: str
    data: Any


def _number(value: Any) -> int:
    """An outbox position as stored; absent (never written) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def write(tx: Transaction, service: str, saga: str, emitted: list[Emitted]) -> None:
    """Append ``emitted`` to ``service``'s outbox inside ``tx``, numbered after its head."""
    if not emitted:
        return
    head = _number((await tx.get(outbox_key(service, HEAD))).value)
    for number, event in enumerate(emitted, start=head + 1):
        tx.put(outbox_key(service, number), {"id": event_id(service, number), "type": event.type,
                                              "saga": saga, "source": service, "data": event.data})
    tx.put(outbox_key(service, HEAD), head + len(emitted))


class Backoff:
    """Capped exponential backoff with full jitter (the AWS architecture blog's), from ``timeouts``."""

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._failures = 0

    async def wait(self) -> None:
        cap = min(self._timeouts.backoff_max_s, self._timeouts.backoff_initial_s * 2**self._failures)
        self._failures += 1
        await trio.sleep(random.uniform(0, cap))

    def reset(self) -> None:
        self._failures = 0


class Relay:
    """Delivers ``service``'s outbox in order, at least once, to every subscriber of each event's type."""

    def __init__(self, db: Database, service: str, connections: ServiceConnections) -> None:
        self.db = db
        self.service = service
        self._connections = connections
        self._store_backoff = Backoff(db.config.timeouts)

    async def run(self) -> None:
        """For ever: deliver whatever is past ``relayed``, then poll for more every ``sagas.relay_poll_s``."""
        while True:
            relayed, head = await self._retrying(self._positions)
            for number in range(relayed + 1, head + 1):
                await self._relay(number)
            if relayed == head:
                await trio.sleep(self.db.config.sagas.relay_poll_s)

    async def _relay(self, number: int) -> None:
        event = await self._retrying(self._event, number)
        if event is None:
            log.warning("%s: outbox event %d is missing; skipped", self.service, number)
        else:
            await self._deliver(event)
        await self._retrying(self._advance, number)

    async def _retrying(self, read: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``read(*args)`` against the store, waited out while the store cannot answer."""
        while True:
            try:
                result = await read(*args)
            except ClusterError as exc:
                log.info("%s relay: the store did not answer (%s); backing off", self.service, exc)
                await self._store_backoff.wait()
                continue
            self._store_backoff.reset()
            return result

    async def _positions(self) -> tuple[int, int]:
        """``relayed`` and ``head``, read in that order as plain reads (a poll must not cost a commit).

        Both only grow and ``relayed <= head`` holds at every moment, so ``head`` read second is at least
        the ``relayed`` read first.
        """
        relayed = _number((await self.db.get(outbox_key(self.service, RELAYED))).value)
        return relayed, _number((await self.db.get(outbox_key(self.service, HEAD))).value)

    async def _event(self, number: int) -> dict[str, Any] | None:
        value = (await self.db.get(outbox_key(self.service, number))).value
        return value if isinstance(value, dict) else None

    async def _advance(self, number: int) -> None:
        """Move ``relayed`` forward only: a second relay of the same service never moves it back."""
        async def body(tx: Transaction) -> None:
            if _number((await tx.get(outbox_key(self.service, RELAYED))).value) < number:
                tx.put(outbox_key(self.service, RELAYED), number)

        await self.db.run(body)

    async def _deliver(self, event: dict[str, Any]) -> None:
        """Until every subscriber has answered ``event``; one that unsubscribes meanwhile is not waited for."""
        backoff = Backoff(self.db.config.timeouts)
        pending = set(await self._retrying(subscribers, self.db, str(event.get("type"))))
        while pending:
            for name in sorted(pending):
                if await self._answered(name, event):
                    pending.discard(name)
            if pending:
                await backoff.wait()
                pending &= set(await self._retrying(subscribers, self.db, str(event.get("type"))))

    async def _answered(self, name: str, event: dict[str, Any]) -> bool:
        reply = await self._connections.deliver_event(name, event, self.db.config.sagas.attempt_timeout_s)
        failure = reply.get("failed")
        if failure is None:
            return True
        if failure["retryable"]:
            log.info("%s relay: %s did not take %s (%s); will retry", self.service, name, event.get("id"), failure)
            return False
        log.warning("%s relay: %s refused %s for good (%s); moving on", self.service, name, event.get("id"), failure)
        return True
