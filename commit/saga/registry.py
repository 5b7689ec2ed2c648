"""Where services announce their address and the event types they consume: keys in the store.

    _services/<name> = {"host": str, "port": int, "events": [event types]}
    _events/<type>   = sorted list of the names of the services that consume it

An orchestrator or a relay looks a service up by name when it (re)connects, so a service that restarts
on another port is found again. A subscription is durable, as an Eventuate Tram consumer's is: it
outlives the consumer's process, so events emitted while a consumer is down wait for it rather than
bypass it (stopping a service leaves both keys; nothing here unregisters). Registration rewrites the
service's entry and its subscriptions together, in one transaction, so a relay never sees a service
subscribed to a type its entry does not list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from commit.client import Database
from commit.transaction import Transaction

SERVICES = "_services"
EVENTS = "_events"


@dataclass(frozen=True)
class Address:
    host: str
    port: int


def service_key(name: str) -> str:
    return f"{SERVICES}/{name}"


def event_key(event_type: str) -> str:
    return f"{EVENTS}/{event_type}"


def _names(raw: Any) -> set[str]:
    """A stored list of names; anything else (never written by this module) counts as empty."""
    return {n for n in raw if isinstance(n, str)} if isinstance(raw, list) else set()


async def _resubscribe(tx: Transaction, name: str, event_type: str, subscribed: bool) -> None:
    key = event_key(event_type)
    names = _names((await tx.get(key)).value)
    names = names | {name} if subscribed else names - {name}
    tx.put(key, sorted(names))


async def register(db: Database, name: str, host: str, port: int, events: Iterable[str]) -> None:
    """Record where ``name`` listens and make its subscriptions exactly ``events``."""
    wanted = set(events)

    async def body(tx: Transaction) -> None:
        old = (await tx.get(service_key(name))).value
        before = _names(old.get("events")) if isinstance(old, dict) else set()
        for event_type in sorted(wanted | before):
            await _resubscribe(tx, name, event_type, event_type in wanted)
        tx.put(service_key(name), {"host": host, "port": port, "events": sorted(wanted)})

    await db.run(body)


async def lookup(db: Database, name: str) -> Address | None:
    """Where ``name`` listens, or None when it never registered."""
    entry = (await db.get(service_key(name))).value
    if not isinstance(entry, dict):
        return None
    host, port = entry.get("host"), entry.get("port")
    if not (isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool)):
        return None
    return Address(host, port)


async def subscribers(db: Database, event_type: str) -> list[str]:
    """The services that consume ``event_type``, in name order (the order a relay delivers in)."""
    return sorted(_names((await db.get(event_key(event_type))).value))
