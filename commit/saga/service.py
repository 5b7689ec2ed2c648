"""The service SDK: named actions, compensations, confirms and event consumers, served over RPC.

    inventory = Service("inventory")

    @inventory.action("reserve")
    async def reserve(ctx: StepContext, input: dict) -> dict:
        stock = await ctx.get(f"stock/{input['sku']}", 0)        # the key inventory/stock/<sku>
        if stock < input["qty"]:
            raise Fail("OutOfStock", f"{stock} left")             # final: the saga compensates
        ctx.put(f"stock/{input['sku']}", stock - input["qty"])
        return {"reserved": input["qty"]}

    async with open_service(inventory, config, port=0) as running:   # serves, registers, relays
        ...

Each call runs its handler in ONE store transaction (``db.run``, retried on conflict) together with
dtm's barrier row (``commit.saga.barrier``) and the events it emits (``commit.saga.outbox``): the effect,
the record that it happened and its events commit together or not at all. A handler may therefore run
more than once before one run commits, and must touch the store only through its ``StepContext``.

How a handler's ending becomes the reply (docs/SAGAS.md, "The service RPC"):

* it returns: ``{"ok": result}``, and the barrier keeps ``result`` for duplicates, the compensation
  and the confirm;
* it raises ``Fail``: a business refusal, final, ``retryable: false``; nothing is committed and nothing
  recorded, so a later compensation of it is a null compensation (dtm);
* it raises anything else, or the store does (a ``ClusterError``, ``CommitUnknown`` included): failed
  with ``retryable: true`` under the exception's type name. Retrying is safe whichever way a
  ``CommitUnknown`` went: a committed attempt left its barrier row, and the retry finds it.

Every request is hostile until checked: names are strings of at most ``sagas.max_name_chars`` without
``/`` (a ``/`` would let two barrier keys collide), ``op`` is one of the three, the handler is
registered for that kind, and the parameters nest at most ``limits.max_nesting_depth`` deep. A bad
request is ``InvalidRequest`` and touches nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from commit.client import Database, connect
from commit.config import ClusterConfig, load_config
from commit.routing import key_bytes
from commit.saga.barrier import (
    ACTION,
    COMPENSATION,
    CONFIRM,
    EVENT,
    STEP_OPS,
    Barrier,
    Branch,
    Reply,
    failed,
    ok,
)
from commit.saga.outbox import Emitted, Relay, write
from commit.saga.registry import register
from commit.saga.remote import EVENT_METHOD, STEP_METHOD, open_service_connections, server_id
from commit.transaction import Transaction
from consensus.errors import ClusterError, InvalidRequest
from consensus.rpc import Handler, serve_rpc
from consensus.tasks import open_helper_nursery
from consensus.wire import nested_deeper

log = logging.getLogger(__name__)

RESERVED_PREFIX = "_"  # names under a service that the SDK keeps: _barrier/..., _outbox/...
NAME_SEPARATOR = "/"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Fail(Exception):
    """A business failure: final (``retryable: false``), and nothing of the handler is committed."""

    def __init__(self, error: str, message: str = "") -> None:
        super().__init__(f"{error}: {message}" if message else error)
        self.error = error
        self.message = message


class StepContext:
    """What a handler may touch: its service's keys, its events, inside the one transaction ``tx``."""

    def __init__(self, tx: Transaction, service: str, saga: str, step: str, op: str, *,
                 checks: ParamChecks) -> None:
        self.tx = tx
        self.service = service
        self.saga = saga
        self.step = step
        self.op = op
        self.emitted: list[Emitted] = []
        self._checks = checks

    def _key(self, name: str) -> str:
        """``<service>/<name>``; names starting with ``_`` are the barrier's and the outbox's."""
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            raise InvalidRequest(f"a data name must be a non-empty str not starting with {RESERVED_PREFIX!r}")
        return f"{self.service}/{name}"

    async def get(self, name: str, default: Any = None) -> Any:
        seen = await self.tx.get(self._key(name))
        return seen.value if seen.exists else default

    def put(self, name: str, value: Any) -> None:
        self.tx.put(self._key(name), value)

    def delete(self, name: str) -> None:
        self.tx.delete(self._key(name))

    def emit(self, type: str, data: Any = None) -> None:
        """An event of this saga, written to the outbox when (and only if) this transaction commits.

        Checked here as a consumer will check it, so an event no consumer could take is refused while
        its handler can still fail, not skipped by the relay later.
        """
        self._checks.name(type, "event type")
        self._checks.shape({"event": {"data": data}})
        self.emitted.append(Emitted(type, data))


class EventContext(StepContext):
    """A consumer's context: the event being consumed, and the saga it belongs to."""

    def __init__(self, tx: Transaction, service: str, event: dict[str, Any], *, checks: ParamChecks) -> None:
        super().__init__(tx, service, event["saga"], EVENT, EVENT, checks=checks)
        self.event = event


class Service:
    """A named set of handlers; ``barrier`` is for tests that need a broken one."""

    def __init__(self, name: str, *, barrier: Barrier | None = None) -> None:
        self.name = name
        self.barrier = barrier or Barrier()
        self.handlers: dict[str, dict[str, Callable[..., Awaitable[Any]]]] = {
            ACTION: {}, COMPENSATION: {}, CONFIRM: {}, EVENT: {},
        }

    def _register(self, kind: str, name: str) -> Callable[[F], F]:
        if name in self.handlers[kind]:
            raise ValueError(f"service {self.name}: {kind} {name!r} is registered twice")

        def decorate(fn: F) -> F:
            self.handlers[kind][name] = fn
            return fn

        return decorate

    def action(self, name: str) -> Callable[[F], F]:
        """A forward operation, ``fn(ctx, input) -> result``: a saga step's action or a TCC Try."""
        return self._register(ACTION, name)

    def compensation(self, name: str) -> Callable[[F], F]:
        """``fn(ctx, input, result)`` undoes an action given its recorded result; also a TCC Cancel."""
        return self._register(COMPENSATION, name)

    def confirm(self, name: str) -> Callable[[F], F]:
        """TCC's Confirm, ``fn(ctx, input, result)`` given the Try's recorded result."""
        return self._register(CONFIRM, name)

    def on(self, event_type: str) -> Callable[[F], F]:
        """A choreography consumer, ``fn(ctx: EventContext, event)``, event as in docs/SAGAS.md."""
        return self._register(EVENT, event_type)

    @property
    def event_types(self) -> list[str]:
        return sorted(self.handlers[EVENT])

    def check_names(self, checks: ParamChecks) -> None:
        """Before serving: every name fits the cluster's limits (the same checks a request meets)."""
        checks.name(self.name, "service name")
        if self.name.startswith(RESERVED_PREFIX):
            raise InvalidRequest(f"a service name must not start with {RESERVED_PREFIX!r} (the registry's keys)")
        for kind, table in self.handlers.items():
            for name in table:
                checks.name(name, f"{kind} name")


@dataclass(frozen=True)
class _Call:
    """A checked request: its barrier branch, how to make its context, how to run its handler."""

    branch: Branch
    context: Callable[[Transaction], StepContext]
    run: Callable[[StepContext, Any], Awaitable[Any]]  # (ctx, the action's recorded result)


class ParamChecks:
    """The request checks, from the cluster's limits and this service's handler tables."""

    def __init__(self, config: ClusterConfig, service: Service) -> None:
        self.config = config
        self.service = service

    def name(self, raw: Any, what: str) -> str:
        limit = self.config.sagas.max_name_chars
        if not (isinstance(raw, str) and 0 < len(raw) <= limit and NAME_SEPARATOR not in raw):
            raise InvalidRequest(f"{what} must be a str of 1 to {limit} characters without {NAME_SEPARATOR!r}")
        return raw

    def shape(self, params: dict[str, Any]) -> None:
        limit = self.config.limits.max_nesting_depth
        if nested_deeper(params, limit):
            raise InvalidRequest(f"parameters nest deeper than {limit} arrays and maps (limits.max_nesting_depth)")

    def handler(self, kind: str, raw: Any) -> Callable[..., Awaitable[Any]]:
        name = self.name(raw, "handler")
        found = self.service.handlers[kind].get(name)
        if found is None:
            raise InvalidRequest(f"service {self.service.name} has no {kind} handler {name!r}")
        return found

    def fits(self, key: str) -> None:
        """The longest barrier key a request will write must be a key the store takes."""
        key_bytes(key, self.config.limits.max_key_bytes)

    def step(self, params: dict[str, Any]) -> _Call:
        self.shape(params)
        saga, step = self.name(params.get("saga"), "saga"), self.name(params.get("step"), "step")
        op = params.get("op")
        if op not in STEP_OPS:
            raise InvalidRequest(f"op must be one of {', '.join(STEP_OPS)}")
        handler = self.handler(op, params.get("handler"))
        branch = Branch(self.service.name, saga, step, op)
        self.fits(branch.key(COMPENSATION))
        context = partial(StepContext, service=self.service.name, saga=saga, step=step, op=op, checks=self)
        return _Call(branch, context, _invoker(handler, op, params.get("input")))

    def event(self, params: dict[str, Any]) -> _Call:
        self.shape(params)
        event = params.get("event")
        if not isinstance(event, dict):
            raise InvalidRequest("event must be a map {id, type, saga, source, data}")
        event_id = event.get("id")
        if not (isinstance(event_id, str) and event_id and NAME_SEPARATOR not in event_id):
            raise InvalidRequest(f"event id must be a non-empty str without {NAME_SEPARATOR!r}")
        handler = self.handler(EVENT, event.get("type"))
        checked = {"id": event_id, "type": event["type"], "saga": self.name(event.get("saga"), "event saga"),
                   "source": self.name(event.get("source"), "event source"), "data": event.get("data")}
        branch = Branch.of_event(self.service.name, event_id)
        self.fits(branch.key())
        context = partial(EventContext, service=self.service.name, event=checked, checks=self)
        return _Call(branch, context, lambda ctx, _prior: handler(ctx, checked))


def _invoker(
    handler: Callable[..., Awaitable[Any]], op: str, input: Any
) -> Callable[[StepContext, Any], Awaitable[Any]]:
    """An action sees its input; a compensation and a confirm also see the action's recorded result."""
    if op == ACTION:
        return lambda ctx, _prior: handler(ctx, input)
    return lambda ctx, prior: handler(ctx, input, prior)


class _Handlers:
    """The service's RPC methods: check the request, then run it under the barrier in one transaction."""

    def __init__(self, service: Service, db: Database) -> None:
        self.service = service
        self.db = db
        self.checks = ParamChecks(db.config, service)

    def routes(self) -> dict[str, Handler]:
        return {STEP_METHOD: self.step, EVENT_METHOD: self.deliver}

    async def step(self, params: dict[str, Any]) -> Reply:
        return await self._execute(self.checks.step(params))

    async def deliver(self, params: dict[str, Any]) -> Reply:
        reply = await self._execute(self.checks.event(params))
        return ok(True) if "ok" in reply else reply

    async def _execute(self, call: _Call) -> Reply:
        try:
            return await self.db.run(self._attempt, call)
        except Fail as exc:
            refusal = failed(str(exc.error), str(exc.message), False)
            if call.branch.op != ACTION:
                return refusal  # a compensation or confirm must succeed in the end: nothing is recorded
            try:
                return await self.db.run(self.service.barrier.refuse, call.branch, refusal)
            except ClusterError as exc:
                return failed(type(exc).__name__, exc.message, True)
        except ClusterError as exc:
            return failed(type(exc).__name__, exc.message, True)
        except Exception as exc:
            log.warning("%s: handler of %s failed", self.service.name, call.branch, exc_info=True)
            return failed(type(exc).__name__, str(exc), True)

    async def _attempt(self, tx: Transaction, call: _Call) -> Reply:
        """One attempt of ``db.run``: barrier row, effects and events in ``tx``, or a reply without them."""
        admission = await self.service.barrier.admit(tx, call.branch)
        if admission.reply is not None:
            return admission.reply
        ctx = call.context(tx)
        result = await call.run(ctx, admission.prior)
        self.service.barrier.finish(tx, call.branch, result)
        await write(tx, self.service.name, ctx.saga, ctx.emitted)
        return ok(result)


@dataclass(frozen=True)
class RunningService:
    """A service being served: where it listens (registered), and its connection to the store."""

    service: Service
    db: Database
    host: str
    port: int


@asynccontextmanager
async def open_service(
    service: Service, config: str | Path | ClusterConfig = "cluster.toml", *,
    host: str = "127.0.0.1", port: int = 0,
) -> AsyncIterator[RunningService]:
    """Serve ``service`` in a nursery: RPC on ``host:port`` (0: any free port), registered before this
    yields, and its outbox relay as a task beside the server. Leaving the block stops both; the
    registration stays (a subscription is durable: ``commit.saga.registry``)."""
    cfg = config if isinstance(config, ClusterConfig) else load_config(config)
    service.check_names(ParamChecks(cfg, service))
    async with connect(cfg) as db, open_service_connections(db) as connections, \
            open_helper_nursery() as nursery:
        handlers = _Handlers(service, db)
        listeners = await nursery.start(partial(
            serve_rpc, handlers.routes(), node_id=server_id(service.name), host=host, port=port,
            settings=cfg.rpc_settings()))
        bound = listeners[0].socket.getsockname()[1]
        await register(db, service.name, host, bound, service.event_types)
        nursery.start_soon(Relay(db, service.name, connections).run)
        log.info("service %s serving on %s:%d", service.name, host, bound)
        yield RunningService(service, db, host, bound)


async def _serve_forever(service: Service, config: str | Path | ClusterConfig, host: str, port: int) -> None:
    async with open_service(service, config, host=host, port=port):
        await trio.sleep_forever()


def run_service(
    service: Service, config: str | Path | ClusterConfig = "cluster.toml", *,
    host: str = "127.0.0.1", port: int = 0,
) -> None:
    """A service process's main: serve until interrupted (Ctrl-C raises KeyboardInterrupt out of it)."""
    trio.run(_serve_forever, service, config, host, port)
