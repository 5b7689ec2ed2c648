"""The Raft ports (consensus.raft_transport): no peer can take a node down before proving the secret.

Unit tests drive PySyncObj's own connection code over fake sockets, with frames made by PySyncObj's
own ``TcpConnection.send``; cluster tests flood real nodes' Raft ports and exhaust a node's descriptors.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from time import monotonic
from typing import Any

import pytest
import trio
from pysyncobj.poller import POLL_EVENT_TYPE, PollPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

import commit
from commit.config import parse_config
from commit.routing import shard_of
from commit.tooling.localcluster import LocalCluster
from consensus.raft_mac import link_mac
from consensus.raft_transport import FrameReader, FrameRefused, LimitedConnection, LimitedServer
from consensus.settings import RaftTransportLimits
from tests.conftest import _started

LIMITS = RaftTransportLimits(max_handshake_frame_bytes=4096, max_frame_bytes=32 * 1024 * 1024,
                             max_connections=8, max_connections_per_address=2, handshake_s=5.0)
PASSWORD = "the-peer-secret"
ENCRYPTOR = link_mac(PASSWORD)  # what our replicas sign with (PBKDF2: made once)
ROOT = Path(__file__).resolve().parent.parent


def _header(length: int) -> bytes:
    return struct.pack("i", length)  # PySyncObj's header: native order, signed


# -- fakes of what PySyncObj's connection touches --------------------------------------------------


class _Poller:
    """Records subscriptions; ``fire`` delivers an event as PySyncObj's poller would."""

    def __init__(self) -> None:
        self.callbacks: dict[int, Callable[[int, int], None]] = {}

    def subscribe(self, descr: int, callback: Callable[[int, int], None], mask: int) -> None:
        self.callbacks[descr] = callback

    def unsubscribe(self, descr: int) -> None:
        self.callbacks.pop(descr, None)

    def fire(self, descr: int, event: int = POLL_EVENT_TYPE.READ) -> None:
        self.callbacks[descr](descr, event)


class _Socket:
    """A non-blocking socket: ``recv`` hands out what the test queued, then EAGAIN; ``send`` records."""

    def __init__(self, descr: int = 5, on_recv: Callable[[], None] | None = None) -> None:
        self.descr = descr
        self.incoming: deque[bytes] = deque()
        self.sent = bytearray()
        self.recv_calls = 0
        self._on_recv = on_recv

    def queue(self, data: bytes, chunk: int) -> None:
        self.incoming.extend(data[i:i + chunk] for i in range(0, len(data), chunk))

    def recv(self, size: int) -> bytes:
        if self._on_recv is not None:
            self._on_recv()
        self.recv_calls += 1
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "no data")
        head = self.incoming.popleft()
        if len(head) > size:
            self.incoming.appendleft(head[size:])
        return head[:size]

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def fileno(self) -> int:
        return self.descr

    def getsockopt(self, *_: Any) -> int:
        return 0

    def setsockopt(self, *_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _frame(message: Any, *, encrypted: bool, send_key: bytes | None = None) -> bytes:
    """``message`` as PySyncObj's ``TcpConnection.send`` frames it (wrapped with ``send_key`` if given)."""
    wire = _Socket()
    sender = TcpConnection(poller=_Poller(), socket=wire)
    sender.encryptor = ENCRYPTOR if encrypted else None
    sender.sendRandKey = send_key
    sender.send(message)
    return bytes(wire.sent)


class _Receiver:
    """An incoming LimitedConnection on a fake socket, answering the key exchange as TCPTransport does."""

    def __init__(self, *, encrypted: bool, recv_size: int = 1024, on_recv: Callable[[], None] | None = None):
        self.poller = _Poller()
        self.wire = _Socket(on_recv=on_recv)
        self.messages: list[Any] = []
        self.conn = LimitedConnection(poller=self.poller, socket=self.wire, timeout=60.0,
                                      recvBufferSize=recv_size, limits=LIMITS)
        self.conn.encryptor = ENCRYPTOR if encrypted else None
        self.conn.setOnMessageReceivedCallback(self._received)
        self.own_key = os.urandom(32)

    def _received(self, message: Any) -> None:
        if self.conn.encryptor is not None and self.conn.sendRandKey is None:  # transport.py, incoming
            self.conn.sendRandKey = message
            self.conn.recvRandKey = self.own_key
        self.messages.append(message)

    def deliver(self, data: bytes, chunk: int = 1024) -> None:
        self.wire.queue(data, chunk)
        while self.wire.incoming and self.conn.state != CONNECTION_STATE.DISCONNECTED:
            self.poller.fire(self.wire.descr)

    @property
    def closed(self) -> bool:
        return self.conn.state == CONNECTION_STATE.DISCONNECTED


# -- the frame reader -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [-1, -(2**31), 2**31 - 1, LIMITS.max_frame_bytes + 1])
def test_an_oversized_or_negative_length_is_refused_from_the_header_alone(length: int) -> None:
    reader = FrameReader(LIMITS)
    reader.proven = True
    reader.feed(_header(length))
    with pytest.raises(FrameRefused) as refused:
        reader.frame_ready()
    assert refused.value.announced == length
    assert reader.buffered == 4


def test_until_proven_only_handshake_sized_frames_are_allowed() -> None:
    reader = FrameReader(LIMITS)
    reader.feed(_header(LIMITS.max_handshake_frame_bytes) + b"x" * LIMITS.max_handshake_frame_bytes)
    assert reader.next_frame() is not None
    reader.feed(_header(LIMITS.max_handshake_frame_bytes + 1))
    with pytest.raises(FrameRefused):
        reader.frame_ready()
    reader.proven = True
    assert not reader.frame_ready()  # the same header is fine once the peer proved the secret


def test_a_connection_stops_reading_at_a_refused_header() -> None:
    receiver = _Receiver(encrypted=True)
    receiver.wire.queue(_header(2**31 - 1) + b"\0" * 1020, chunk=1024)
    receiver.wire.queue(b"\0" * (1 << 20), chunk=1024)
    receiver.poller.fire(receiver.wire.descr)
    assert receiver.closed
    assert receiver.wire.recv_calls == 1
    assert len(receiver.wire.incoming) == 1024  # the rest of the "frame" was never read


def test_an_encrypted_peer_is_proven_by_the_frame_that_carries_this_connection_key() -> None:
    receiver = _Receiver(encrypted=True)
    peer_key = os.urandom(32)
    receiver.deliver(_frame(peer_key, encrypted=True))
    assert receiver.messages == [peer_key]
    assert not receiver.conn.proven  # the key frame is sealed but could be replayed from another connection
    receiver.deliver(_frame("127.0.0.1:7111", encrypted=True, send_key=receiver.own_key))
    assert receiver.conn.proven
    big = b"e" * (256 * 1024)
    receiver.deliver(_frame(big, encrypted=True, send_key=receiver.own_key))
    assert receiver.messages[-1] == big and not receiver.closed


def test_an_encrypted_peer_may_not_send_a_big_frame_before_proving_the_secret(seed: int) -> None:
    receiver = _Receiver(encrypted=True)
    receiver.deliver(_frame(os.urandom(32), encrypted=True))
    incompressible = random.Random(seed).randbytes(64 * 1024)
    receiver.deliver(_frame(incompressible, encrypted=True, send_key=receiver.own_key))
    assert receiver.closed and len(receiver.messages) == 1


def test_a_replayed_key_frame_does_not_prove_anything() -> None:
    receiver = _Receiver(encrypted=True)
    key_frame = _frame(os.urandom(32), encrypted=True)
    receiver.deliver(key_frame)
    receiver.deliver(key_frame)  # PySyncObj: the second frame must carry this connection's key
    assert receiver.closed and not receiver.conn.proven


def test_without_a_password_an_incoming_peer_is_proven_by_its_address(seed: int) -> None:
    receiver = _Receiver(encrypted=False)
    incompressible = random.Random(seed).randbytes(2 * LIMITS.max_handshake_frame_bytes)
    receiver.deliver(_frame(incompressible, encrypted=False))
    assert receiver.closed
    receiver = _Receiver(encrypted=False)
    receiver.deliver(_frame("127.0.0.1:7111", encrypted=False))
    assert receiver.conn.proven


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_connection_this_node_opens_is_proven_at_once_only_without_a_password(encrypted: bool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn = LimitedConnection(poller=PollPoller(), limits=LIMITS)
        conn.encryptor = ENCRYPTOR if encrypted else None
        assert conn.connect("127.0.0.1", listener.getsockname()[1])
        assert conn.proven is not encrypted
        conn.disconnect()


def test_out_of_descriptors_a_connection_to_a_peer_fails_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptor(*_: Any) -> socket.socket:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(socket, "socket", no_descriptor)
    conn = LimitedConnection(poller=_Poller(), limits=LIMITS)
    assert conn.connect("127.0.0.1", 9) is False  # PySyncObj retries after connectionRetryTime
    assert conn.state == CONNECTION_STATE.DISCONNECTED


def test_a_10_mb_frame_in_1_kb_reads_is_buffered_in_place(seed: int) -> None:
    """PySyncObj's ``bytes +=`` copied the whole buffer on every read; here each read lands in one bytearray."""
    pysyncobj_buffer_sizes: list[int] = []
    receiver = _Receiver(encrypted=False, on_recv=lambda: pysyncobj_buffer_sizes.append(
        len(receiver.conn._TcpConnection__readBuffer)))
    receiver.deliver(_frame("127.0.0.1:7111", encrypted=False))
    payload = random.Random(seed).randbytes(10 * 1024 * 1024)
    frame = _frame(payload, encrypted=False)
    reader = receiver.conn._frames
    storage = reader._buffer
    receiver.wire.queue(frame, chunk=1024)
    while receiver.wire.incoming:
        receiver.poller.fire(receiver.wire.descr)
        assert reader._buffer is storage and type(storage) is bytearray
    assert receiver.messages[-1] == payload
    assert receiver.wire.recv_calls >= len(frame) // 1024
    assert max(pysyncobj_buffer_sizes) == 0  # PySyncObj's immutable buffer never accumulates a frame
    assert reader.buffered == 0


# -- the server -------------------------------------------------------------------------------------


class _Server:
    """A LimitedServer on a free loopback port, polled by hand."""

    def __init__(self) -> None:
        self.poller = PollPoller()
        self.accepted: list[LimitedConnection] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = LimitedServer(self.poller, "127.0.0.1", self.port, self.accepted.append,
                                    limits=LIMITS, retry_s=1.0)
        self.server.bind()
        self.clients: list[socket.socket] = []

    def dial(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port))
        self.clients.append(client)
        return client

    def poll(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.poller.poll(0.05)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for conn in self.accepted:
            conn.disconnect()
        self.server.unbind()


@pytest.fixture
def server() -> Iterator[_Server]:
    made = _Server()
    yield made
    made.close()


class _OutOfDescriptors:
    """The listening socket, as it behaves once the process has no descriptor left."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def accept(self) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_out_of_descriptors_the_port_stays_bound_and_accepts_again(server: _Server) -> None:
    listening = server.server._TcpServer__socket
    server.server._TcpServer__socket = _OutOfDescriptors(listening)
    server.dial()
    server.poll()
    assert server.accepted == []
    server.server._TcpServer__socket = listening
    server.server.tend(monotonic())  # too early: still paused, and not polling a port it cannot accept on
    server.poll()
    assert server.accepted == []
    server.server.tend(monotonic() + 1.0)
    server.poll()
    assert len(server.accepted) == 1


def test_a_failed_listener_is_bound_again(server: _Server) -> None:
    server.server._TcpServer__onNewConnection(server.server._TcpServer__fileno, POLL_EVENT_TYPE.ERROR)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    server.server.tend(monotonic() + 1.0)
    server.dial()
    server.poll()
    assert len(server.accepted) == 1


def test_past_the_cap_the_oldest_unproven_connection_goes_and_proven_ones_stay(server: _Server) -> None:
    for _ in range(LIMITS.max_connections_per_address + 1):
        server.dial()
        server.poll()
    first, *rest = server.accepted
    assert first.state == CONNECTION_STATE.DISCONNECTED
    assert all(c.state != CONNECTION_STATE.DISCONNECTED for c in rest)
    for conn in rest:
        conn._frames.proven = True
    server.dial()
    server.poll()
    assert all(c.state != CONNECTION_STATE.DISCONNECTED for c in rest)
    assert len(server.server.connections()) == LIMITS.max_connections_per_address


def test_a_node_raises_its_open_file_limit_to_the_hard_limit() -> None:
    script = ("import resource; from consensus.raft_transport import raise_open_file_limit; "
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
              "print(raise_open_file_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_cluster_toml_limits_reach_every_raft_port(tmp_path: Path) -> None:
    text = """
[[nodes]]
id = "n1"
rpc_port = 7101
raft_port = 7111

[limits]
max_handshake_frame_bytes = 2048
max_raft_frame_bytes = 50000000
max_raft_connections = 10
max_raft_connections_per_address = 3

[timeouts]
handshake_s = 1.5
"""
    config = parse_config(text, tmp_path / "cluster.toml")
    expected = RaftTransportLimits(max_handshake_frame_bytes=2048, max_frame_bytes=50_000_000,
                                   max_connections=10, max_connections_per_address=3, handshake_s=1.5)
    assert {spec.transport for spec in config.group_specs("n1")} == {expected}
    defaults = parse_config(text.split("[limits]")[0], tmp_path / "cluster.toml")
    assert {spec.transport for spec in defaults.group_specs("n1")} == {RaftTransportLimits()}


# -- real clusters ----------------------------------------------------------------------------------


def _dialed_node(cluster: LocalCluster) -> str:
    """The node that every other member dials, in every group (PySyncObj: the larger address connects)."""

    def address(node_id: str, index: int) -> str:
        node = cluster.config.node(node_id)
        return f"{node.host}:{node.raft_port + index}"

    dialed = min(cluster.node_ids, key=lambda n: address(n, 0))
    for layout in cluster.config.groups():
        assert min(layout.members, key=lambda n: address(n, layout.index)) == dialed
    return dialed


def _raft_ports(cluster: LocalCluster, node_id: str) -> list[tuple[str, int]]:
    node = cluster.config.node(node_id)
    return [(node.host, node.raft_port + layout.index) for layout in cluster.config.groups()]


def _key_on_each_shard(cluster: LocalCluster) -> list[bytes]:
    count = cluster.config.shard_count
    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < count:
        key = f"raft-port-{i}".encode()
        keys.setdefault(shard_of(key, count), key)
        i += 1
    return [keys[shard] for shard in range(count)]


PUT_WITHIN_S = 3.0  # a put on a healthy cluster takes milliseconds; a re-election takes about a second


async def _put_on_every_shard(cluster: LocalCluster, value: Any) -> None:
    async with commit.connect(cluster.config) as db:
        for key in _key_on_each_shard(cluster):
            with trio.fail_after(PUT_WITHIN_S):
                await db.put(key, value)


FLOOD_CHUNK = 64 * 1024
FLOOD_BYTES_PER_CONNECTION = 32 * 1024 * 1024  # then a byte now and then: what a node buffers stays bounded


async def _flood(address: tuple[str, int], stop: trio.Event, closed: list[tuple[str, int]]) -> None:
    """Announce a 2 GiB frame and feed it; again, a moment after each time the node closes the connection."""
    chunk = b"\0" * FLOOD_CHUNK
    while not stop.is_set():
        try:
            with trio.fail_after(1):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError):
            await trio.sleep(0.05)
            continue
        try:
            async with stream:
                await stream.send_all(_header(2**31 - 1))
                sent = 0
                while not stop.is_set():
                    if sent < FLOOD_BYTES_PER_CONNECTION:
                        await stream.send_all(chunk)
                        sent += len(chunk)
                    else:
                        await stream.send_all(b"\0")
                        await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            closed.append(address)
        await trio.sleep(0.05)


@pytest.fixture(scope="module")
def raft_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("raft-ports"))


@pytest.mark.cluster
async def test_floods_of_huge_frames_on_every_raft_port_leave_every_shard_writable(raft_cluster: LocalCluster) -> None:
    """One connection per Raft port of every node, each announcing a 2 GiB frame and feeding it."""
    ports = [a for n in raft_cluster.node_ids for a in _raft_ports(raft_cluster, n)]
    stop = trio.Event()
    closed: list[tuple[str, int]] = []
    async with trio.open_nursery() as nursery:
        for address in ports:
            nursery.start_soon(_flood, address, stop, closed)
        await trio.sleep(1.0)
        with trio.move_on_after(4.0):
            for round_ in range(1_000_000):
                await _put_on_every_shard(raft_cluster, round_)
        stop.set()
    assert set(closed) == set(ports)  # every port closed its flood at once, again and again
    await _put_on_every_shard(raft_cluster, "after")


async def _watch_closed(stream: trio.SocketStream, closed: list[trio.SocketStream]) -> None:
    try:
        await stream.receive_some(1)
    except trio.BrokenResourceError:
        pass
    closed.append(stream)


@pytest.mark.cluster
async def test_unproven_connections_past_the_cap_are_closed_and_the_rest_time_out(raft_cluster: LocalCluster) -> None:
    cluster = raft_cluster
    address = _raft_ports(cluster, _dialed_node(cluster))[0]
    cap = cluster.config.limits.max_raft_connections_per_address
    extra = 8
    closed: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        streams = [await trio.open_tcp_stream(*address) for _ in range(cap + extra)]
        for stream in streams:
            nursery.start_soon(_watch_closed, stream, closed)
        with trio.fail_after(2.0):
            while len(closed) < extra:
                await trio.sleep(0.05)
        assert len(streams) - len(closed) <= cap
        assert streams[-1] not in closed  # the oldest unproven ones go, not the newest
        with trio.fail_after(cluster.config.timeouts.handshake_s + 2.0):
            while len(closed) < len(streams):
                await trio.sleep(0.1)
        for stream in streams:
            await stream.aclose()
    await _put_on_every_shard(cluster, "after idle connections")


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _hold_idle_connections(ports: list[tuple[str, int]], held: list[trio.SocketStream],
                                 stop: trio.Event) -> None:
    """Keep opening connections that send nothing, so that every free descriptor of the node is taken."""
    while not stop.is_set():
        for address in ports:
            with trio.move_on_after(0.2):
                try:
                    held.append(await trio.open_tcp_stream(*address))
                except OSError:
                    pass
        await trio.sleep(0.05)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    yield from _started(tmp_path)


def _rejoined(rows: list[dict[str, Any]], node_id: str, groups: set[str]) -> bool:
    mine = {r["group"]: r for r in rows if r.get("node") == node_id and r.get("reachable")}
    leading = {r["group"]: r for r in rows if r.get("reachable") and r.get("role") == "leader"}
    return mine.keys() == groups == leading.keys() and all(
        mine[g]["role"] in ("leader", "follower") and mine[g]["leader"] == leading[g]["node"]
        and mine[g]["applied_index"] >= leading[g]["commit_index"] for g in groups
    )


@pytest.mark.cluster
async def test_a_node_out_of_descriptors_rejoins_every_group_once_they_are_free(own_cluster: LocalCluster) -> None:
    """Its peers restart while it cannot accept; PySyncObj would have closed its Raft ports for good."""
    cluster = own_cluster
    node_id = _dialed_node(cluster)
    others = [n for n in cluster.node_ids if n != node_id]
    pid = cluster.procs[node_id].pid
    for other in others:
        cluster.kill(other)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    headroom = 8  # well under what the caps let idle connections hold, so the descriptors run out first
    exhausted = _open_descriptors(pid) + headroom
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (exhausted, hard))
    stop = trio.Event()
    held: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hold_idle_connections, _raft_ports(cluster, node_id), held, stop)
            with trio.fail_after(5.0):
                while _open_descriptors(pid) < exhausted:
                    await trio.sleep(0.05)
            for other in others:
                cluster.start(other)
            await trio.sleep(3.0)  # the peers dial in and meet a node that cannot accept
            stop.set()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for stream in held:
            await stream.aclose()
    groups = {g.name for g in cluster.config.groups()}
    await _put_on_every_shard(cluster, "after the descriptors came back")
    with trio.fail_after(15.0):
        while not _rejoined(await cluster.status(), node_id, groups):
            await trio.sleep(0.2)
    assert "cannot accept" in cluster.config.node_log(node_id).read_text()
