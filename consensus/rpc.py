"""msgpack RPC over TCP with trio: a server, and a pipelined client connection.

Frames (see ``consensus.wire``) carry these messages:

    server -> client   {"hello": node_id, "nonce": bytes, "auth": bool}
    client -> server   {"as": "client" | node_id, "nonce": bytes, "proof": bytes}
    server -> client   {"welcome": node_id, "proof": bytes}   or an error response, then close
    client -> server   [req_id, method, params]  (any number in flight)
    server -> client   [req_id, error, result]   (error is None or a wire error dict)

The handshake is mutual (``consensus.auth``): the client proves the client
secret, or a node proves its own node key; then the server proves the same
key back, so nobody trusts a process that only squats a node's port. Its
frames are limited to ``max_handshake_frame_bytes``: before the proof, a
stranger can make a node buffer almost nothing. Each request's handler can
ask ``current_caller()`` who is calling: a client, or which node.

Responses may come back in any order; the client matches them by ``req_id``.
A request with a bad shape is answered with ``invalid_request`` and the
connection stays usable; a frame that is too large or not msgpack is answered
with an error under request id 0 and the connection is closed, because the
byte stream can no longer be trusted. A client that half-closes its side
still gets the replies to what it sent.

What one connection may hold is bounded: requests in flight, bytes of
replies waiting to be sent (a client that does not read is disconnected, not
buffered for), and time without traffic (``idle_timeout_s``). A server takes
at most ``max_connections``, and ``max_connections_per_address`` from one
address, so file descriptors are left for the node's Raft links and files.

Following trio's conventions, nothing here takes a timeout argument for the
client's calls: callers put their own cancel scopes around ``RpcClient.call``
and ``open_rpc_client``. The server guards itself with the timeouts above.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from consensus import auth
from consensus.auth import Credentials
from consensus.errors import (
    ClusterError,
    InternalError,
    InvalidRequest,
    Unauthorized,
    Unavailable,
    error_from_wire,
)
from consensus.settings import HANDSHAKE_FRAME_BYTES
from consensus.tasks import open_helper_nursery
from consensus.wire import FrameReader, FrameTooLarge, GarbageFrame, encode_frame

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
Router = Mapping[str, Handler]

_RECEIVE_CHUNK = 65536


@dataclass(frozen=True)
class RpcSettings:
    """Limits shared by both ends of a connection, and what this end can prove."""

    max_frame_bytes: int
    handshake_timeout_s: float
    max_in_flight_per_connection: int
    credentials: Credentials = field(default_factory=Credentials)
    max_handshake_frame_bytes: int = HANDSHAKE_FRAME_BYTES
    max_queued_reply_bytes: int = 16 * 1024 * 1024
    idle_timeout_s: float = 600.0
    max_connections: int = 1024
    max_connections_per_address: int = 512
    source_host: str | None = None  # a node dials from its own address, so that address rules can cut it off


@dataclass(frozen=True)
class Caller:
    """Who sent the request being handled: a node (authenticated by its node key) or a client."""

    node_id: str | None
    address: str

    @property
    def is_node(self) -> bool:
        return self.node_id is not None


_caller: ContextVar[Caller] = ContextVar("rpc_caller")


def current_caller() -> Caller:
    """The authenticated caller of the request this task is handling."""
    return _caller.get()


class _Outgoing:
    """Frames that go out together in one write, and who waits for it."""

    __slots__ = ("frames", "done", "error")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = trio.Event()
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()


class FramedStream:
    """A trio stream that sends and receives whole frames.

    Sends are coalesced: frames queued while a write is in progress go out together in the next one (the
    acceptor log's group commit, on a socket), in the order they were queued. Under load one system call,
    and one wake-up of the reader, carries many frames. A frame is written even if its sender is
    cancelled while it waits; a write cut short (its sender cancelled mid-write, a peer gone) fails every
    frame of it and of the ones queued behind, since the stream is broken from then on.
    """

    def __init__(self, stream: trio.abc.Stream, max_frame_bytes: int) -> None:
        self._stream = stream
        self._max = max_frame_bytes
        self._reader = FrameReader(max_frame_bytes)
        self._next = _Outgoing()
        self._writing = False
        self.queued_bytes = 0
        self.last_activity = trio.current_time()  # the last frame received or sent whole
        self.sending_since: float | None = None  # when the write now in progress began

    def limit_frames(self, max_frame_bytes: int) -> None:
        """From now on, refuse frames above this size, in both directions (the handshake's small limit)."""
        self._max = max_frame_bytes
        self._reader.limit(max_frame_bytes)

    async def send(self, message: Any, *, budget: int | None = None) -> None:
        """Send one frame; with a ``budget``, refuse to queue more than that many bytes behind the socket."""
        frame = encode_frame(message, self._max)
        if budget is not None and self.queued_bytes + len(frame) > budget:
            raise trio.BrokenResourceError(f"{self.queued_bytes + len(frame)} bytes of replies not read")
        self.queued_bytes += len(frame)
        batch = self._next
        batch.frames.append(frame)
        try:
            if self._writing:
                await batch.done.wait()
            else:
                await self._write_queued()
        finally:
            self.queued_bytes -= len(frame)
        if batch.error is not None:
            raise batch.error

    async def _write_queued(self) -> None:
        """Write batches until none is queued; on a failed write, fail the batches queued behind it too."""
        self._writing = True
        try:
            while self._next.frames:
                batch, self._next = self._next, _Outgoing()
                self.sending_since = trio.current_time()
                try:
                    await self._stream.send_all(b"".join(batch.frames))
                except BaseException as exc:
                    batch.settle(exc if isinstance(exc, Exception) else trio.BrokenResourceError(
                        "the write was cancelled part-way: the stream is broken"))
                    raise
                finally:
                    self.sending_since = None
                self.last_activity = trio.current_time()
                batch.settle(None)
        finally:
            self._writing = False
            if self._next.frames:  # left by a failed write: nobody else would write them
                behind, self._next = self._next, _Outgoing()
                behind.settle(trio.BrokenResourceError("an earlier write on this stream failed"))

    async def receive(self) -> Any:
        """Next message, or raise EOFError when the peer closed the stream."""
        while True:
            ready, message = self._reader.next_frame()
            if ready:
                self.last_activity = trio.current_time()
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


async def _reply(conn: FramedStream, message: Any, settings: RpcSettings) -> None:
    """Send a reply within the connection's budget; a client that reads nothing is cut off, not buffered."""
    await conn.send(message, budget=settings.max_queued_reply_bytes)


# How often a connection's watchdog looks at it, as a share of timeouts.idle_connection_s: a connection is
# closed between one and 1 + this share of that timeout after it went quiet.
IDLE_CHECK_SHARE = 0.25


async def _watch_idle(conn: FramedStream, settings: RpcSettings, in_flight: trio.Semaphore,
                      cut_off: Callable[[str], None]) -> None:
    """Close a connection with nothing in flight that sent nothing, or whose reply is not read, for the timeout.

    One sleeping task per connection, rather than a deadline around every receive and every send.
    """
    limit = settings.idle_timeout_s
    while True:
        await trio.sleep(limit * IDLE_CHECK_SHARE)
        now = trio.current_time()
        if conn.sending_since is not None and now - conn.sending_since > limit:
            cut_off(f"a reply was not read for {limit}s")
            return
        if in_flight.value == settings.max_in_flight_per_connection and now - conn.last_activity > limit:
            cut_off(f"idle for {limit}s")
            return


async def _answer(
    conn: FramedStream, router: Router, req_id: int, method: str, params: dict[str, Any],
    in_flight: trio.Semaphore, settings: RpcSettings, cut_off: Callable[[str], None],
) -> None:
    try:
        error, result = await _dispatch(router, method, params)
        try:
            await _reply(conn, [req_id, error, result], settings)
        except FrameTooLarge as exc:
            await _reply(conn, [req_id, exc.to_wire(), None], settings)
    except trio.BrokenResourceError as exc:
        cut_off(str(exc))
    except trio.ClosedResourceError:
        pass
    finally:
        in_flight.release()


async def _handshake_server(conn: FramedStream, node_id: str, settings: RpcSettings, peer: str) -> Caller | None:
    """Check the peer's proof and prove ours back; the caller it authenticated, or None (then close)."""
    credentials = settings.credentials
    nonce = auth.new_nonce()
    await conn.send({"hello": node_id, "nonce": nonce, "auth": not credentials.open})
    try:
        reply = await conn.receive()
    except (FrameTooLarge, GarbageFrame):
        return None
    claimed = reply.get("as", auth.CLIENT) if isinstance(reply, dict) else None
    their_nonce = reply.get("nonce") if isinstance(reply, dict) else None
    if not (isinstance(claimed, str) and isinstance(their_nonce, bytes) and len(their_nonce) == auth.NONCE_BYTES):
        await conn.send([0, InvalidRequest("the handshake needs 'as' and a 16-byte 'nonce'").to_wire(), None])
        return None
    key = credentials.key_for(claimed)
    if claimed == auth.CLIENT and credentials.open:
        proof = b""
    elif key is None or not auth.verify(key, "to-server", claimed, node_id, nonce, their_nonce, reply.get("proof")):
        what = "the cluster secret" if claimed == auth.CLIENT else f"the node key of {claimed!r}"
        await conn.send([0, Unauthorized(f"{what} was not proven").to_wire(), None])
        return None
    else:
        proof = auth.prove(key, "to-client", claimed, node_id, their_nonce, nonce)
    await conn.send({"welcome": node_id, "proof": proof})
    return Caller(None if claimed == auth.CLIENT else claimed, peer)


async def _read_requests(
    conn: FramedStream, router: Router, settings: RpcSettings, nursery: trio.Nursery, peer: str
) -> str | None:
    """Dispatch requests until the peer half-closes (None, once its answers went out) or must be cut off (why)."""
    in_flight = trio.Semaphore(settings.max_in_flight_per_connection)

    def cut_off(reason: str) -> None:
        log.warning("closing connection from %s: %s", peer, reason)
        nursery.cancel_scope.cancel()

    nursery.start_soon(_watch_idle, conn, settings, in_flight, cut_off)
    while True:
        try:
            message = await conn.receive()
        except (FrameTooLarge, GarbageFrame) as exc:
            await conn.send([0, exc.to_wire(), None])
            return str(exc)
        except EOFError:
            for _ in range(settings.max_in_flight_per_connection):  # the answers to what it sent go out first
                await in_flight.acquire()
            return None
        try:
            req_id, method, params = _parse_request(message)
        except InvalidRequest as exc:
            await _reply(conn, [_request_id_of(message), exc.to_wire(), None], settings)
            continue
        await in_flight.acquire()
        nursery.start_soon(_answer, conn, router, req_id, method, params, in_flight, settings, cut_off)


class _Admission:
    """Counts a server's open connections, in all and per address, against the settings' caps."""

    def __init__(self, settings: RpcSettings) -> None:
        self._settings = settings
        self._per_address: Counter[str] = Counter()
        self._total = 0

    @contextmanager
    def admit(self, address: str) -> Iterator[str | None]:
        """Yields None when the connection may be served, else why not."""
        if self._total >= self._settings.max_connections:
            yield f"the node serves at most {self._settings.max_connections} connections"
            return
        if self._per_address[address] >= self._settings.max_connections_per_address:
            yield f"at most {self._settings.max_connections_per_address} connections from {address}"
            return
        self._total += 1
        self._per_address[address] += 1
        try:
            yield None
        finally:
            self._total -= 1
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]


async def _serve_connection(
    router: Router, node_id: str, settings: RpcSettings, admission: _Admission, stream: trio.SocketStream
) -> None:
    """Serve one client until it leaves; nothing a client sends can escape into the node."""
    conn = FramedStream(stream, settings.max_handshake_frame_bytes)
    address, peer = _peer(stream)
    try:
        with admission.admit(address) as refusal:
            if refusal is not None:
                await conn.send([0, Unavailable(refusal).to_wire(), None])
                return
            caller = None
            with trio.move_on_after(settings.handshake_timeout_s):
                caller = await _handshake_server(conn, node_id, settings, peer)
            if caller is None:
                return
            _caller.set(caller)
            conn.limit_frames(settings.max_frame_bytes)
            async with trio.open_nursery() as nursery:
                reason = await _read_requests(conn, router, settings, nursery, peer)
                if reason is not None:
                    log.warning("closing connection from %s: %s", peer, reason)
                nursery.cancel_scope.cancel()  # the idle watchdog, and any answer still running if cut off
    except* (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except* Exception:
        log.exception("connection from %s failed", peer)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """The peer's address, and address:port."""
    try:
        host, port = stream.socket.getpeername()[:2]
        return host, f"{host}:{port}"
    except OSError:
        return "?", "?"


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
        partial(_serve_connection, router, node_id, settings, _Admission(settings)), listeners
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


def _raise_refusal(message: Any) -> None:
    """A server that refuses the connection says why with an error under request id 0."""
    if isinstance(message, list) and len(message) == 3 and message[1] is not None:
        raise error_from_wire(message[1])


async def _handshake_client(
    conn: FramedStream, peer: str, credentials: Credentials, expect_node: str | None
) -> str:
    hello = await conn.receive()
    _raise_refusal(hello)
    if not (isinstance(hello, dict) and isinstance(hello.get("hello"), str) and isinstance(hello.get("nonce"), bytes)):
        raise Unavailable(f"{peer} did not greet with a valid hello")
    node_id, nonce = hello["hello"], hello["nonce"]
    if expect_node is not None and node_id != expect_node:
        raise InvalidRequest(f"{peer} claims to be node {node_id!r}, expected {expect_node!r}")
    claimed = credentials.claim
    key = credentials.key_for(claimed)
    if hello.get("auth") and key is None:
        raise Unauthorized(f"node {node_id} requires the cluster secret and none is configured")
    my_nonce = auth.new_nonce()
    proof = auth.prove(key, "to-server", claimed, node_id, nonce, my_nonce) if key is not None else b""
    await conn.send({"as": claimed, "nonce": my_nonce, "proof": proof})
    welcome = await conn.receive()
    _raise_refusal(welcome)
    if not (isinstance(welcome, dict) and welcome.get("welcome") == node_id):
        raise Unavailable(f"{peer} sent no welcome")
    if key is not None and not auth.verify(key, "to-client", claimed, node_id, my_nonce, nonce, welcome.get("proof")):
        raise Unauthorized(f"{peer} did not prove the cluster secret: it is not node {node_id} of this cluster")
    return node_id


async def connect_rpc(
    host: str, port: int, *, settings: RpcSettings, expect_node: str | None = None
) -> RpcClient:
    """Connect and authenticate; the caller must then run ``client.read_responses()``."""
    peer = f"{host}:{port}"
    try:
        stream = await trio.open_tcp_stream(host, port, local_address=settings.source_host)
    except OSError as exc:
        raise Unavailable(f"cannot connect to {peer}: {exc.strerror or exc}") from None
    conn = FramedStream(stream, settings.max_handshake_frame_bytes)
    try:
        node_id = await _handshake_client(conn, peer, settings.credentials, expect_node)
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        await conn.aclose()
        raise Unavailable(f"{peer} closed the connection during the handshake") from None
    except BaseException:
        await conn.aclose()
        raise
    conn.limit_frames(settings.max_frame_bytes)
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
