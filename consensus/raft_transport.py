"""The Raft ports: PySyncObj's TCP transport with limits, so that whoever connects cannot take a node down.

PySyncObj 0.3.17's transport (tcp_connection.py, tcp_server.py, transport.py) trusts whoever connects:

* ``TcpConnection.__processRead`` appends every ``recv`` to an immutable ``bytes`` buffer (``+=`` copies
  the whole buffer: quadratic in the frame), and ``__processParseMessage`` reads a signed 4-byte length
  and waits for that many bytes, whatever it says. A dozen connections announcing 2 GiB frames and
  feeding them kept every tick thread copying, and every group lost its leader.
* An idle connection is never timed out: ``__processConnectionTimeout`` runs only on a poll event of that
  connection, and one that sends nothing has none. Nothing caps how many are open.
* When ``accept`` fails (EMFILE, once such connections hold every descriptor), ``TcpServer`` unbinds its
  port and ``TCPTransport`` never binds it again (``_maybeBind`` returns once ``_ready``). Peers that
  connect to this node (PySyncObj: the node with the larger address dials) never reach it again, and the
  replica is out of its group for good.
* With a password PySyncObj encrypts every frame (Fernet), and the first frame on an incoming connection
  is the peer's random key. Nothing before it is authenticated, and any frame size was buffered anyway.

What holds here instead, on every replica's Raft port and on its connections to its peers:

* A frame's length is checked as soon as its 4 bytes are in, before more of it is read: a connection whose
  peer has not proved the secret may announce ``max_handshake_frame_bytes``, then ``max_frame_bytes``. A
  negative or larger length closes the connection. Bytes wait in one ``bytearray`` (``FrameReader``):
  appending, and consuming frames from the front, cost amortised constant time per byte (a ``del`` of
  a bytearray's head moves its start; CPython copies the rest only once it is under half the allocation).
* A connection's peer has proved the secret once it delivered a frame that decrypted and carried this
  connection's own random key (PySyncObj's ``recvRandKey``), so that the frame cannot have been replayed
  from another connection: the peer's key, the first frame of an incoming connection, is Fernet-sealed
  but replayable, so there it is the second (the peer's address). Without a password nothing can be
  proved: a connection this node opened counts from the start (its peer sends Raft traffic first), an
  incoming one once it has sent its address. A connection that has not within ``handshake_s`` is closed,
  idle or not.
* A port holds at most ``max_connections`` connections, at most ``max_connections_per_address`` from one
  address. One more closes the oldest unproven one of that address (or of the port), or itself if all are
  proven. Evicting the oldest rather than refusing the newest lets a real peer in during a flood: its
  key exchange takes one round trip, and every older flood connection goes before it.
* ``accept`` failing for lack of descriptors or memory pauses accepting for PySyncObj's ``bindRetryTime``
  (a readable listener that cannot accept would spin the tick thread); the port stays bound. Any other
  failure closes the port and binds it again every ``bindRetryTime``, while the replica goes on with its
  open connections (clearing PySyncObj's ``_ready`` would stop its whole tick until then).
* ``socket()`` failing for a connection to a peer (EMFILE) is a failed attempt, retried after
  ``connectionRetryTime``, not an exception out of every tick.

Each of these is logged, at most once every ``LOG_EVERY_S`` per kind, with a count of the ones not logged.

PySyncObj's ``SyncObj`` takes a ``transportClass``: ``LimitedTransportSyncObj`` passes ``LimitedTransport``,
which reads the limits from a ``LimitedTransportConf``. Put it after a ``SyncObj`` subclass whose
``__init__`` passes no transport (``class Replica(DurableSyncObj, LimitedTransportSyncObj)``).
``TCPTransport`` makes its server and its connections to peers from the names ``TcpServer`` and
``TcpConnection`` of pysyncobj.transport, with no other hook, so those two names are swapped while
``_createServer`` and ``addNode`` run, under a lock, as consensus.durability does for the journal. Only
replicas built this way are affected.
"""

from __future__ import annotations

import errno
import functools
import logging
import resource
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

import pysyncobj.syncobj as ps_syncobj
import pysyncobj.transport as ps_transport
from pysyncobj import SyncObjConf
from pysyncobj.poller import POLL_EVENT_TYPE, Poller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer

from consensus.raft_mac import link_mac
from consensus.settings import RaftTransportLimits

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # one line per kind of refusal at most this often: a flood must not flood the log too

_HEADER = struct.Struct("i")  # PySyncObj's frame header: struct.pack('i', len(data)), native order, signed

# accept(2) on Linux: "already-pending network errors on the new socket" (retry, like EAGAIN), and a
# connection aborted or refused by a firewall before it was accepted. None of them concerns the port.
_ACCEPT_RETRY = frozenset(
    getattr(errno, name) for name in (
        "EAGAIN", "EWOULDBLOCK", "EINTR", "ECONNABORTED", "EPERM", "EPROTO", "ENOPROTOOPT", "ENETDOWN",
        "ENONET", "EHOSTDOWN", "EHOSTUNREACH", "ENETUNREACH", "EOPNOTSUPP", "ETIMEDOUT",
    ) if hasattr(errno, name)
)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Throttled:
    """Warnings of one kind at most once every ``every_s``; the next one says how many were not logged."""

    def __init__(self, logger: logging.Logger, every_s: float) -> None:
        self._log = logger
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()  # every replica's tick thread logs through it

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._every_s:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (and %d more like it since the last such line)"
            args += (skipped,)
        self._log.warning(message, *args)


_throttled = _Throttled(log, LOG_EVERY_S)


class FrameRefused(Exception):
    """A peer announced a frame length outside what its connection may send."""

    def __init__(self, announced: int, limit: int, proven: bool) -> None:
        self.announced = announced
        self.limit = limit
        self.proven = proven
        when = "after" if proven else "before"
        key = "limits.max_raft_frame_bytes" if proven else "limits.max_handshake_frame_bytes"
        super().__init__(f"it announced a frame of {announced} bytes; at most {limit} are allowed {when} "
                         f"a peer has proved the cluster secret ({key})")


class FrameReader:
    """PySyncObj's frames out of a byte stream, each length checked against the limit before it is read.

    Sans-IO: ``feed`` what the socket gave, ask ``frame_ready`` whether to stop reading, take whole frames
    (header included, as PySyncObj's parser wants them) with ``next_frame``. Both raise ``FrameRefused``
    as soon as the frame at the head announces a length that is negative or over ``limit``, which is
    ``max_handshake_frame_bytes`` until the connection sets ``proven``, then ``max_frame_bytes``.
    """

    def __init__(self, limits: RaftTransportLimits) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self.proven = False

    @property
    def limit(self) -> int:
        return self._limits.max_frame_bytes if self.proven else self._limits.max_handshake_frame_bytes

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def _head_length(self) -> int | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if not 0 <= length <= self.limit:
            raise FrameRefused(length, self.limit, self.proven)
        return int(length)

    def frame_ready(self) -> bool:
        """Whether the frame at the head is whole (then reading more can wait until it is parsed)."""
        length = self._head_length()
        return length is not None and len(self._buffer) - _HEADER.size >= length

    def next_frame(self) -> bytes | None:
        """The frame at the head, header included, once it is whole; ``None`` before."""
        if not self.frame_ready():
            return None
        end = _HEADER.size + _HEADER.unpack_from(self._buffer)[0]
        frame = bytes(self._buffer[:end])
        del self._buffer[:end]
        return frame

    def clear(self) -> None:
        self._buffer.clear()
        self.proven = False


class LimitedConnection(TcpConnection):
    """A PySyncObj connection that reads through a ``FrameReader`` and knows whether its peer proved the secret.

    Reading: PySyncObj's ``__processRead`` does the ``recv`` and its error handling into an empty
    ``bytes`` buffer, whose content moves at once into the reader; reading stops when a whole frame is in,
    so at most one ``recv`` (``recvBufferSize``) lies beyond the frame being checked. Parsing: one whole
    frame at a time goes to PySyncObj's ``__processParseMessage``, which decrypts it, checks its
    timestamp and random key, and unpickles it (or disconnects).

    Dialling: the socket is bound to ``source_host``, the replica's own address, before it connects, so a
    peer sees traffic from this node come from this node's address, not from whatever the kernel picks
    (127.0.0.1 for every node on loopback). A partition made of address rules (``chaos.nemesis``) then cuts
    both directions of every connection, the ones this node dialled included.
    """

    def __init__(self, *args: Any, limits: RaftTransportLimits, source_host: str | None = None,
                 **kwargs: Any) -> None:
        self._limits = limits
        self._source_host = source_host
        self._dialling = False
        self._frames = FrameReader(limits)
        self._opened_at = monotonic()
        self.peer_host: str | None = None
        self._peer = "a peer"
        super().__init__(*args, **kwargs)

    @property
    def proven(self) -> bool:
        return self._frames.proven

    def accepted_from(self, address: tuple[Any, ...]) -> None:
        self.peer_host = str(address[0])
        self._peer = f"{address[0]}:{address[1]}"

    def connect(self, host: str, port: int) -> bool:
        self._frames.clear()
        self._frames.proven = self.encryptor is None  # nothing to prove: the peer sends Raft traffic first
        self._opened_at = monotonic()
        self._peer = f"{host}:{port}"
        self._dialling = True
        try:
            return bool(super().connect(host, port))
        except OSError as exc:  # socket(), setsockopt() or bind(): out of descriptors or buffers
            _throttled.warning("connect", "cannot open a Raft connection to %s: %s (tried again later)",
                               self._peer, exc)
            self.disconnect()
            return False
        finally:
            self._dialling = False

    def setSockoptKeepalive(self) -> None:  # noqa: N802 (PySyncObj's name)
        """PySyncObj's last step on a new socket before ``connect``: where the source address is bound."""
        super().setSockoptKeepalive()
        if self._dialling and self._source_host is not None:
            self._TcpConnection__socket.bind((self._source_host, 0))

    def disconnect(self) -> None:
        """PySyncObj's, except that the socket leaves the poller before it is closed, not after.

        PySyncObj closes the socket, then unsubscribes its number (tcp_connection.py ``disconnect``). poll(2)
        keeps no registrations, but epoll (``consensus.ticker``) does, per open file: a closed number can no
        longer be unregistered, and while a forked snapshot writer (``useFork``) still holds the socket, the
        registration stays and reports its events under a number that a new connection may already reuse.
        """
        self._frames.clear()
        fileno = self._TcpConnection__fileno
        if fileno is not None:
            self._TcpConnection__poller.unsubscribe(fileno)  # PySyncObj's own unsubscribe then finds nothing
        super().disconnect()

    def expire_handshake(self, now: float) -> None:
        """Close this connection if its peer has not proved the secret ``handshake_s`` after it opened."""
        if self.state == CONNECTION_STATE.DISCONNECTED or self._frames.proven:
            return
        if now - self._opened_at >= self._limits.handshake_s:
            _throttled.warning("handshake", "closed the Raft connection with %s: the peer did not prove the "
                               "cluster secret within %.1f s (timeouts.handshake_s)", self._peer,
                               self._limits.handshake_s)
            self.disconnect()

    def _refuse(self, refused: FrameRefused) -> None:
        _throttled.warning("frame", "closed the Raft connection with %s: %s", self._peer, refused)
        self.disconnect()

    def _TcpConnection__processRead(self) -> bool:  # noqa: N802 (PySyncObj's name)
        self._TcpConnection__readBuffer = b""
        if not super()._TcpConnection__processRead():
            return False
        self._frames.feed(self._TcpConnection__readBuffer)
        self._TcpConnection__readBuffer = b""
        try:
            return not self._frames.frame_ready()
        except FrameRefused as refused:
            self._refuse(refused)
            return False

    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802 (PySyncObj's name)
        try:
            frame = self._frames.next_frame()
        except FrameRefused as refused:
            self._refuse(refused)
            return None
        if frame is None:
            return None
        carries_own_key = self.encryptor is None or self.recvRandKey is not None
        self._TcpConnection__readBuffer = frame
        message = super()._TcpConnection__processParseMessage()
        if self.state != CONNECTION_STATE.DISCONNECTED and carries_own_key:
            self._frames.proven = True
        return message


class LimitedServer(TcpServer):
    """A Raft port that caps its connections and survives failures of ``accept`` (see the module)."""

    def __init__(self, *args: Any, limits: RaftTransportLimits, retry_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._retry_s = retry_s
        self._accepted: list[LimitedConnection] = []
        self._paused_until: float | None = None
        self._rebind_at: float | None = None

    @property
    def _where(self) -> str:
        return f"{self._TcpServer__host}:{self._TcpServer__port}"

    def bind(self) -> None:
        try:
            super().bind()
        except OSError:
            if self._TcpServer__socket is not None:  # PySyncObj leaves a socket that failed to bind open
                self._TcpServer__socket.close()
            raise

    def unbind(self) -> None:
        self._paused_until = self._rebind_at = None
        super().unbind()

    def connections(self) -> list[LimitedConnection]:
        """The connections this port accepted that are still open, oldest first."""
        self._accepted = [c for c in self._accepted if c.state != CONNECTION_STATE.DISCONNECTED]
        return list(self._accepted)

    def tend(self, now: float) -> None:
        """From the transport's tick: accept again after a pause, bind again after a failure."""
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._watch()
        if self._rebind_at is not None and now >= self._rebind_at:
            try:
                self.bind()
            except OSError as exc:
                self._rebind_at = now + self._retry_s
                _throttled.warning("bind", "Raft port %s: cannot bind again: %s (tried every %.1f s)",
                                   self._where, exc, self._retry_s)
            else:
                log.info("Raft port %s: bound again", self._where)

    def _watch(self) -> None:
        self._TcpServer__poller.subscribe(self._TcpServer__fileno, self._TcpServer__onNewConnection,
                                          POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:  # noqa: N802 (PySyncObj's name)
        if event & POLL_EVENT_TYPE.ERROR:
            self._close_until_rebound("the listening socket reported an error")
        elif event & POLL_EVENT_TYPE.READ:
            self._accept()

    def _accept(self) -> None:
        try:
            sock, address = self._TcpServer__socket.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY:
                return
            if exc.errno in _OUT_OF_RESOURCES:
                self._TcpServer__poller.unsubscribe(self._TcpServer__fileno)
                self._paused_until = monotonic() + self._retry_s
                _throttled.warning("accept", "Raft port %s cannot accept: %s; it stays bound and accepts "
                                   "again in %.1f s", self._where, exc, self._retry_s)
            else:
                self._close_until_rebound(f"accept failed: {exc}")
            return
        try:
            self._admit(sock, address)
        except OSError as exc:  # the connection failed before it could be set up
            sock.close()
            log.debug("Raft port %s: dropped a connection from %s: %s", self._where, address, exc)

    def _admit(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        open_now = self.connections()
        same_address = [c for c in open_now if c.peer_host == str(address[0])]
        if len(same_address) >= self._limits.max_connections_per_address:
            crowd, cap = same_address, "max_raft_connections_per_address"
        elif len(open_now) >= self._limits.max_connections:
            crowd, cap = open_now, "max_raft_connections"
        else:
            crowd, cap = [], ""
        if cap:
            oldest_unproven = next((c for c in crowd if not c.proven), None)
            if oldest_unproven is None:
                sock.close()
                _throttled.warning("cap", "Raft port %s: refused a connection from %s: limits.%s reached "
                                   "by connections that proved the cluster secret", self._where, address[0], cap)
                return
            _throttled.warning("cap", "Raft port %s: limits.%s reached; closed the oldest connection from %s "
                               "that had not proved the cluster secret", self._where, cap,
                               oldest_unproven.peer_host)
            oldest_unproven.disconnect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = LimitedConnection(
            poller=self._TcpServer__poller,
            socket=sock,
            timeout=self._TcpServer__connectionTimeout,
            sendBufferSize=self._TcpServer__sendBufferSize,
            recvBufferSize=self._TcpServer__recvBufferSize,
            keepalive=self._TcpServer__keepalive,
            limits=self._limits,
        )
        conn.accepted_from(address)
        self._accepted.append(conn)
        self._TcpServer__onNewConnectionCallback(conn)

    def _close_until_rebound(self, why: str) -> None:
        self.unbind()
        self._rebind_at = monotonic() + self._retry_s
        _throttled.warning("rebind", "Raft port %s closed: %s; binding it again in %.1f s",
                           self._where, why, self._retry_s)


_swap_lock = threading.RLock()  # a replica's construction swaps names while PySyncObj builds its transport


@contextmanager
def _swapped(module: Any, name: str, replacement: Any) -> Iterator[None]:
    """``module.name`` is ``replacement`` inside the block (which runs in one thread at a time)."""
    with _swap_lock:
        original = getattr(module, name)
        setattr(module, name, replacement)
        try:
            yield
        finally:
            setattr(module, name, original)


class LimitedTransportConf(SyncObjConf):
    """PySyncObj's configuration, plus the limits of the replica's Raft port (read by ``LimitedTransport``).

    ``poller``, if given, is the one the replica's sockets and command notifier subscribe to instead of the
    one PySyncObj makes from ``pollerType`` (``consensus.ticker``: epoll, or the node's one tick thread).
    """

    def __init__(self, transport_limits: RaftTransportLimits, poller: Poller | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport_limits = transport_limits
        self.poller = poller


class LimitedTransport(ps_transport.TCPTransport):
    """PySyncObj's TCP transport on ``LimitedServer`` and ``LimitedConnection``, tending both every tick.

    It also puts the conf's ``poller`` in place, the one hook there is: ``SyncObj.__init__`` makes its
    poller (syncobj.py:205) just before it constructs the transport (:210), and everything that
    subscribes reads ``syncObj._poller`` later: the server (transport.py:279), the connections to peers
    (transport.py:523) and the command notifier (syncobj.py:264).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803 (PySyncObj's names)
        self._limits: RaftTransportLimits = syncObj.conf.transport_limits
        if syncObj.conf.poller is not None:
            syncObj._poller = syncObj.conf.poller
        self._constructing = not syncObj.conf.autoTick
        super().__init__(syncObj, selfNode, otherNodes)

    @property
    def ready(self) -> bool:
        """Bound, or (while a replica without its own tick thread is constructed) tried once.

        Without ``autoTick``, ``SyncObj.__init__`` calls ``tryGetReady`` until the port is bound
        (syncobj.py:290-291); with PySyncObj's default ``maxBindRetries`` of 0 (unlimited) and a port in
        use, that spins for ever, between tries ``bindRetryTime`` apart (transport.py ``_maybeBind``). With
        ``autoTick`` the tick thread tries once (syncobj.py:578) and every tick tries again (syncobj.py:612),
        which is what happens here too once construction is over (``LimitedTransportSyncObj``).
        """
        return bool(self._ready or (self._constructing and self._bindAttempts > 0))

    def constructed(self) -> None:
        self._constructing = False

    def _createServer(self) -> None:  # noqa: N802 (PySyncObj's name)
        server = functools.partial(LimitedServer, limits=self._limits, retry_s=self._syncObj.conf.bindRetryTime)
        with _swapped(ps_transport, "TcpServer", server):
            super()._createServer()

    def addNode(self, node: Any) -> None:  # noqa: N802 (PySyncObj's name)
        source = self._selfNode.host if self._selfNode is not None else None
        with _swapped(ps_transport, "TcpConnection",
                      functools.partial(LimitedConnection, limits=self._limits, source_host=source)):
            super().addNode(node)

    def _onTick(self) -> None:  # noqa: N802 (PySyncObj's name)
        super()._onTick()
        now = monotonic()
        if self._server is not None:
            self._server.tend(now)
        for conn in list(self._unknownConnections) + list(self._connections.values()):
            conn.expire_handshake(now)


class LimitedTransportSyncObj(ps_syncobj.SyncObj):
    """A ``SyncObj`` on ``LimitedTransport``; its ``conf`` must be a ``LimitedTransportConf``."""

    def __init__(self, selfNode: Any, otherNodes: Any, conf: LimitedTransportConf,  # noqa: N803
                 consumers: list[Any] | None = None) -> None:
        if not isinstance(conf, LimitedTransportConf):
            raise TypeError("a replica on the limited Raft transport needs a LimitedTransportConf")
        with _swapped(ps_syncobj, "getEncryptor", link_mac):  # signed frames, not Fernet (consensus.raft_mac)
            super().__init__(selfNode, otherNodes, conf=conf, consumers=consumers, transportClass=LimitedTransport)
        self._SyncObj__transport.constructed()


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit; returns the soft limit now.

    A node holds one descriptor per connection on each Raft port and on its RPC port, besides its files;
    the usual soft limit of 1024 is what a flood of connections exhausts first. PySyncObj waits with
    poll(2) (``pollerType`` 'auto' where poll exists), which, unlike select(2), takes descriptors past 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:  # unlimited hard: the OS caps the soft limit itself
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard
