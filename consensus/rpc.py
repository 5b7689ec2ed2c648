"""msgpack RPC over TCP with trio: a server, and a pipelined client connection.

Frames (see ``consensus.wire``) carry these messages:

    server -> client   {"hello": node_id, "nonce": bytes, "auth": bool}
    client -> server   {"proof": bytes}          (empty bytes when no secret is set)
    server -> client   {"welcome": node_id}      or an error response, then close
    client -> server   [req_id, method, params]  (any number in flight)
    server -> client   [req_id, error, result]   (error is None or a wire error dict)

Responses may come back in any order; the client matches them by ``req_id``.
A request with a bad shape is answered with ``invalid_request`` and the
connection stays usable; a frame that is too large or not msgpack is answered
with an error under request id 0 and the connection is closed, because the
byte stream can no longer be trusted.

Following trio's conventions, nothing here takes a timeout argument except the
handshake (a server-side guard against idle sockets): callers put their own
cancel scopes around ``RpcClient.call`` and ``open_rpc_client``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from consensus import auth
from consensus.errors import (
    ClusterError,
    InternalError,
    InvalidRequest,
    Unauthorized,
    Unavailable,
    error_from_wire,
)
from consensus.tasks import open_helper_nursery
from consensus.wire import FrameReader, FrameTooLarge, GarbageFrame, encode_frame

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
Router = Mapping[str, Handler]

_RECEIVE_CHUNK = 65536


@dataclass(frozen=True)
class RpcSettings:
    """Limits shared by both ends of a connection."""

    max_frame_bytes: int
    handshake_timeout_s: float
    max_in_flight_per_connection: int
    secret: str | None = None


class FramedStream:
    """A trio stream that sends and receives whole frames; sends are serialised."""

    def __init__(self, stream: trio.abc.Stream, max_frame_bytes: int) -> None:
        self._stream = stream
        self._max = max_frame_bytes
        self._reader = FrameReader(max_frame_bytes)
        self._send_lock = trio.Lock()

    async def send(self, message: Any) -> None:
        frame = encode_frame(message, self._max)
        async with self._send_lock:
            await self._stream.send_all(frame)

    async def receive(self) -> Any:
        """Next message, or raise EOFError when the peer closed the stream."""
        while True:
            ready, message = self._reader.next_frame()
            if ready:
                return message
            data = await self._stream.receive_some(_RECEIVE_CHUNK)
            if not data:
                raise EOFError
            self._reader.feed(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _parse_request(message: Any) -> tuple[int, str, dict[str, Any]]:
    if not (isinstance(message, list) and len(message) == 3):
        raise InvalidRequest("a request must be a 3-element array [req_id, method, params]")
    req_id, method, params = message
    if not isinstance(req_id, int) or isinstance(req_id, bool) or req_id <= 0:
        raise InvalidRequest("req_id must be a positive integer")
    if not isinstance(method, str):
        raise InvalidRequest("method must be a string")
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a map")
    return req_id, method, params


def _request_id_of(message: Any) -> int:
    """The id to answer a malformed request under, so the client can match the error."""
    if isinstance(message, list) and message and isinstance(message[0], int):
        return message[0] if not isinstance(message[0], bool) and message[0] > 0 else 0
    return 0


async def _dispatch(router: Router, method: str, params: dict[str, Any]) -> tuple[Any, Any]:
    handler = router.get(method)
    if handler is None:
        return InvalidRequest(f"unknown method {method!r}").to_wire(), None
    try:
        return None, await handler(params)
    except ClusterError as exc:
        return exc.to_wire(), None
    except Exception:
        log.exception("handler for %s failed", method)
        return InternalError(f"{method} failed on the node; see its log").to_wire(), None


async def _answer(
    conn: FramedStream, router: Router, req_id: int, method: str, params: dict[str, Any],
    in_flight: trio.Semaphore,
) -> None:
    try:
        error, result = await _dispatch(router, method, params)
        try:
            await conn.send([req_id, error, result])
        except FrameTooLarge as exc:
            await conn.send([req_id, exc.to_wire(), None])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        in_flight.release()


async def _handshake_server(conn: FramedStream, node_id: str, settings: RpcSettings) -> bool:
    nonce = auth.new_nonce()
    await conn.send({"hello": node_id, "nonce": nonce, "auth": settings.secret is not None})
    with trio.move_on_after(settings.handshake_timeout_s):
        try:
            reply = await conn.receive()
        except (FrameTooLarge, GarbageFrame):
            return False
        proof = reply.get("proof") if isinstance(reply, dict) else None
        if settings.secret is not None and not auth.verify(settings.secret, nonce, node_id, proof):
            await conn.send([0, Unauthorized("the cluster secret was not proven").to_wire(), None])
            return False
        await conn.send({"welcome": node_id})
        return True
    return False


async def _read_requests(
    conn: FramedStream, router: Router, settings: RpcSettings, nursery: trio.Nursery, peer: str
) -> None:
    in_flight = trio.Semaphore(settings.max_in_flight_per_connection)
    while True:
        try:
            message = await conn.receive()
        except (FrameTooLarge, GarbageFrame) as exc:
            log.warning("closing connection from %s: %s", peer, exc)
            await conn.send([0, exc.to_wire(), None])
            return
        try:
            req_id, method, params = _parse_request(message)
        except InvalidRequest as exc:
            await conn.send([_request_id_of(message), exc.to_wire(), None])
            continue
        await in_flight.acquire()
        nursery.start_soon(_answer, conn, router, req_id, method, params, in_flight)


async def _serve_connection(
    router: Router, node_id: str, settings: RpcSettings, stream: trio.SocketStream
) -> None:
    """Serve one client until it leaves; nothing a client sends can escape into the node."""
    conn = FramedStream(stream, settings.max_frame_bytes)
    peer = _peer(stream)
    try:
        if await _handshake_server(conn, node_id, settings):
            async with trio.open_nursery() as nursery:
                await _read_requests(conn, router, settings, nursery, peer)
                nursery.cancel_scope.cancel()
    except* (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except* Exception:
        log.exception("connection from %s failed", peer)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


async def serve_rpc(
    router: Router,
    *,
    node_id: str,
    host: str,
    port: int,
    settings: RpcSettings,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``router`` forever; reports the bound listeners through ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(
        partial(_serve_connection, router, node_id, settings), listeners
    )


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: ClusterError | None = None
        self.result: Any = None


class RpcClient:
    """One pipelined connection to one node: any number of calls in flight."""

    def __init__(self, conn: FramedStream, peer: str, node_id: str) -> None:
        self._conn = conn
        self.peer = peer
        self.node_id = node_id
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._closed_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        if self._closed_reason is not None:
            raise Unavailable(f"connection to {self.peer} is closed: {self._closed_reason}")
        req_id = self._next_id
        self._next_id += 1
        pending = self._pending[req_id] = _Pending()
        try:
            try:
                await self._conn.send([req_id, method, params])
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._close(f"send failed: {exc!r}")
                raise Unavailable(
                    f"connection to {self.peer} broke while sending", maybe_applied=True
                ) from None
            await pending.done.wait()
        finally:
            self._pending.pop(req_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _close(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        for pending in self._pending.values():
            pending.error = Unavailable(
                f"connection to {self.peer} lost: {reason}", maybe_applied=True
            )
            pending.done.set()

    async def read_responses(self) -> None:
        """Match responses to calls until the connection closes; run it as a task."""
        try:
            while True:
                message = await self._conn.receive()
                if not (isinstance(message, list) and len(message) == 3):
                    raise GarbageFrame(f"malformed response from {self.peer}")
                req_id, error, result = message
                if req_id == 0 and error is not None:
                    raise error_from_wire(error)
                pending = self._pending.get(req_id)
                if pending is None:
                    continue
                if error is not None:
                    pending.error = error_from_wire(error)
                else:
                    pending.result = result
                pending.done.set()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(f"closed by peer ({type(exc).__name__})")
        except ClusterError as exc:
            self._close(exc.message)
        finally:
            self._close("connection task ended")
            with trio.CancelScope(shield=True):
                await self._conn.aclose()


async def _handshake_client(
    conn: FramedStream, peer: str, secret: str | None, expect_node: str | None
) -> str:
    hello = await conn.receive()
    if not (isinstance(hello, dict) and isinstance(hello.get("hello"), str)):
        raise Unavailable(f"{peer} did not greet with a valid hello")
    node_id = hello["hello"]
    if expect_node is not None and node_id != expect_node:
        raise InvalidRequest(f"{peer} claims to be node {node_id!r}, expected {expect_node!r}")
    nonce = hello.get("nonce")
    if hello.get("auth") and secret is None:
        raise Unauthorized(f"node {node_id} requires the cluster secret and none is configured")
    proof = auth.prove(secret, nonce, node_id) if secret is not None and isinstance(nonce, bytes) else b""
    await conn.send({"proof": proof})
    welcome = await conn.receive()
    if isinstance(welcome, list) and len(welcome) == 3 and welcome[1] is not None:
        raise error_from_wire(welcome[1])
    if not (isinstance(welcome, dict) and welcome.get("welcome") == node_id):
        raise Unavailable(f"{peer} sent no welcome")
    return node_id


async def connect_rpc(
    host: str, port: int, *, settings: RpcSettings, expect_node: str | None = None
) -> RpcClient:
    """Connect and authenticate; the caller must then run ``client.read_responses()``."""
    peer = f"{host}:{port}"
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise Unavailable(f"cannot connect to {peer}: {exc.strerror or exc}") from None
    conn = FramedStream(stream, settings.max_frame_bytes)
    try:
        node_id = await _handshake_client(conn, peer, settings.secret, expect_node)
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        await conn.aclose()
        raise Unavailable(f"{peer} closed the connection during the handshake") from None
    except BaseException:
        await conn.aclose()
        raise
    return RpcClient(conn, peer, node_id)


async def run_rpc_client(
    host: str,
    port: int,
    *,
    settings: RpcSettings,
    expect_node: str | None = None,
    task_status: trio.TaskStatus[RpcClient] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, hand the ready client to ``task_status``, then read responses until closed."""
    client = await connect_rpc(host, port, settings=settings, expect_node=expect_node)
    task_status.started(client)
    await client.read_responses()


@asynccontextmanager
async def open_rpc_client(
    host: str, port: int, *, settings: RpcSettings, expect_node: str | None = None
) -> AsyncIterator[RpcClient]:
    client = await connect_rpc(host, port, settings=settings, expect_node=expect_node)
    async with open_helper_nursery() as nursery:
        nursery.start_soon(client.read_responses)
        yield client
