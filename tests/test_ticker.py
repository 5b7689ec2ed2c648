"""consensus.ticker: the epoll poller against real sockets, and one tick thread driving real replicas."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from pysyncobj.batteries import ReplDict
from pysyncobj.poller import POLL_EVENT_TYPE, PollPoller

from commit.config import ConfigError, parse_config
from commit.tooling.localcluster import free_port_block
from consensus.group import ReplicaGroup, _Replica, open_replica_groups
from consensus.raft_transport import LimitedConnection, LimitedTransportConf
from consensus.settings import Durability, GroupSpec, RaftSettings, RaftTransportLimits
from consensus.ticker import EpollPoller, Ticker, open_ticker

READ, WRITE, ERROR = POLL_EVENT_TYPE.READ, POLL_EVENT_TYPE.WRITE, POLL_EVENT_TYPE.ERROR
FAST_RAFT = RaftSettings(election_timeout_min_s=0.31, election_timeout_max_s=0.5)  # PySyncObj: min > 3 x 0.1 s
WAIT_S = 8.0


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S} s")
        time.sleep(0.01)
    return result


# -- the poller ------------------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def events(poller: Any, fd: int, mask: int, timeout: float = 1.0) -> list[int]:
    """The masks ``poller`` reports for ``fd`` (subscribed with ``mask``) in one poll."""
    seen: list[int] = []
    poller.subscribe(fd, lambda descr, event: seen.append(event) if descr == fd else None, mask)
    poller.poll(timeout)
    poller.unsubscribe(fd)
    return seen


@pytest.mark.parametrize("make", [EpollPoller, PollPoller], ids=["epoll", "poll"])
def test_masks_are_pysyncobj_polls(make: Callable[[], Any], pair: tuple[socket.socket, socket.socket]) -> None:
    """Each case as PySyncObj's PollPoller reports it: the epoll poller must match it exactly."""
    a, b = pair
    poller = make()
    assert events(poller, a.fileno(), READ | ERROR, timeout=0.0) == []
    assert events(poller, a.fileno(), WRITE | ERROR) == [WRITE]
    b.send(b"x")
    assert events(poller, a.fileno(), READ | ERROR) == [READ]
    assert events(poller, a.fileno(), READ | WRITE | ERROR) == [READ | WRITE]
    b.close()  # the peer hangs up: HUP (and readable EOF)
    assert events(poller, a.fileno(), READ | ERROR) == [READ | ERROR]
    assert events(poller, a.fileno(), 0) == [ERROR]  # HUP is reported whatever the mask


def test_a_refused_connection_is_an_error_as_with_poll() -> None:
    port = free_port_block(1, random.Random())  # nothing listens there
    masks = []
    for poller in (EpollPoller(), PollPoller()):
        with socket.socket() as s:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))  # EINPROGRESS, then refused
            time.sleep(0.05)
            masks.append(events(poller, s.fileno(), READ | WRITE | ERROR))
    assert masks[0] == masks[1] and masks[0][0] & ERROR, masks


def test_subscribe_again_modifies(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller = EpollPoller()
    first: list[int] = []
    second: list[int] = []
    poller.subscribe(a.fileno(), lambda _, e: first.append(e), READ)
    poller.subscribe(a.fileno(), lambda _, e: second.append(e), WRITE)  # no FileExistsError: modified
    b.send(b"x")
    poller.poll(1.0)
    assert (first, second) == ([], [WRITE])  # the new mask and the new callback
    poller.subscribe(a.fileno(), lambda _, e: second.append(e), READ)
    poller.poll(1.0)
    assert second == [WRITE, READ]
    poller.close()


def test_unsubscribe_of_an_unknown_or_closed_descriptor_is_ignored(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    poller = EpollPoller()
    poller.unsubscribe(a.fileno())  # never subscribed
    with socket.socket() as c:
        fd = c.fileno()
        poller.subscribe(fd, lambda *_: None, READ)
    poller.unsubscribe(fd)  # closed first, as PySyncObj's TcpConnection.disconnect does
    poller.close()


def test_a_descriptor_unsubscribed_during_a_poll_gets_no_more_events() -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    poller = EpollPoller()
    called: list[int] = []
    fds = [a.fileno() for a, _ in pairs]

    def callback(descr: int, event: int) -> None:
        called.append(descr)
        for other in fds:
            if other != descr:
                poller.unsubscribe(other)

    for fd in fds:
        poller.subscribe(fd, callback, READ)
    for _, b in pairs:
        b.send(b"x")
    poller.poll(1.0)
    assert len(called) == 1  # both were ready in this round; the first one's callback dropped the other
    poller.close()
    for a, b in pairs:
        a.close()
        b.close()


def test_the_timeout_is_in_seconds() -> None:
    poller = EpollPoller()
    started = time.monotonic()
    poller.poll(0.2)
    assert 0.15 <= time.monotonic() - started < 1.0
    poller.close()


def test_a_raft_connection_leaves_the_poller_before_its_socket_is_closed(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """epoll forgets a registration only with the last copy of its file (a forked child may hold one)."""
    a, _ = pair
    open_when_unsubscribed: list[bool] = []

    class Recording(EpollPoller):
        def unsubscribe(self, descr: int) -> None:
            try:
                os.fstat(descr)
                open_when_unsubscribed.append(True)
            except OSError:
                open_when_unsubscribed.append(False)
            super().unsubscribe(descr)

    poller = Recording()
    conn = LimitedConnection(poller=poller, socket=a, limits=RaftTransportLimits())
    conn.disconnect()
    assert open_when_unsubscribed[0] is True  # then PySyncObj's own, after close, finds nothing to do
    assert poller._callbacks == {}
    poller.close()


# -- the tick thread -------------------------------------------------------------------------------------


class _Fake:
    def __init__(self, fails: bool = False) -> None:
        self.ticks = 0
        self.fails = fails
        self.destroyed = 0
        self.thread: threading.Thread | None = None

    def doTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803
        self.ticks += 1
        self.thread = threading.current_thread()
        if self.fails:
            raise RuntimeError("tick failed")

    def destroy(self) -> None:
        self.destroyed += 1

    def destroy_synchronous(self) -> None:
        self.destroy()


def test_a_failing_tick_is_logged_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="consensus.ticker")
    threads = threading.active_count()
    with open_ticker() as ticker:
        assert threading.active_count() == threads + 1
        bad, good = ticker.start(lambda: _Fake(fails=True)), ticker.start(lambda: _Fake())
        wait_until(lambda: bad.ticks >= 3 and good.ticks >= 3, "ticks")
        assert good.thread is bad.thread is ticker._thread
        with pytest.raises(ZeroDivisionError):
            ticker.run_sync(lambda: 1 // 0)  # the caller's error, raised in the caller
        ticker.stop(good)
        ticker.stop(good)  # a second stop does nothing
        assert good.destroyed == 1
    assert threading.active_count() == threads
    assert bad.destroyed == 1  # still there when the ticker stopped
    failures = [r for r in caplog.records if r.name == "consensus.ticker"]
    assert len(failures) == 1 and failures[0].exc_info  # one traceback, not one per tick


def test_a_replica_is_ticked_at_each_of_its_events_and_otherwise_once_a_period(
    pair: tuple[socket.socket, socket.socket]
) -> None:
    period = 0.2
    with open_ticker(period_s=period) as ticker:
        busy_view, idle_view = (ticker.conf_options()["poller"] for _ in range(2))
        busy, idle = ticker.start(lambda: _Fake()), ticker.start(lambda: _Fake())
        busy._poller, idle._poller = busy_view, idle_view  # as the transport sets them on a replica
        left, right = pair
        ticker.run_sync(lambda: busy_view.subscribe(right.fileno(), lambda fd, ev: right.recv(1),
                                                    POLL_EVENT_TYPE.READ))
        start = (busy.ticks, idle.ticks)
        for _ in range(40):
            left.send(b"x")
            time.sleep(0.01)
        woken, idled = busy.ticks - start[0], idle.ticks - start[1]
    assert woken >= 20, f"the replica with events was ticked {woken} times for 40 events"
    assert idled <= 0.5 / period + 2, f"the idle replica was ticked {idled} times in about 0.5 s"


def _descriptors(files: Path) -> dict[str, int]:
    """This process's open sockets, epoll and eventfd instances, and files under ``files``, by kind."""
    kinds: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        kind = ("socket" if target.startswith("socket:") else target if target.startswith("anon_inode:")
                else "file" if target.startswith(str(files)) else "")
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _conf(tmp_path: Path, node: str, addr: str, ticker: Ticker) -> LimitedTransportConf:
    return LimitedTransportConf(transport_limits=RaftTransportLimits(), bindAddress=addr,
                                journalFile=str(tmp_path / f"{node}.journal"),
                                fullDumpFile=str(tmp_path / f"{node}.dump"),
                                **FAST_RAFT.syncobj_options(), **ticker.conf_options())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT; not past a listener
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def test_one_thread_ticks_three_replicas_that_elect_and_replicate(tmp_path: Path) -> None:
    base = free_port_block(3, random.Random())
    addrs = [f"127.0.0.1:{base + i}" for i in range(3)]
    threads, descriptors = threading.active_count(), _descriptors(tmp_path)
    dicts = [ReplDict() for _ in addrs]
    with open_ticker() as ticker:
        replicas = [
            ticker.start(lambda i=i: _Replica(addrs[i], [a for a in addrs if a != addrs[i]],
                                              _conf(tmp_path, f"n{i}", addrs[i], ticker), [dicts[i]],
                                              Durability.OS))
            for i in range(3)
        ]
        assert threading.active_count() == threads + 1  # one tick thread for the three
        for replica in replicas:  # the command notifier waits in the shared poller: commands wake it
            notifier = replica._SyncObj__pipeNotifier
            assert notifier._PipeNotifier__pipeR in ticker.poller._callbacks
            assert replica._SyncObj__transport._server._TcpServer__poller._shared is ticker.poller

        def leader() -> list[int]:
            leaders = [i for i, r in enumerate(replicas) if r._isLeader()]
            if len(leaders) == 1 and all(r._getLeader() == replicas[leaders[0]].selfNode for r in replicas):
                return leaders
            return []

        (chosen,) = wait_until(leader, "leader")
        results: list[Any] = []
        dicts[chosen].set("k", "v", callback=lambda result, error: results.append(error))
        wait_until(lambda: all(d.get("k") == "v" for d in dicts), "value on every replica")
        assert results == [0]  # FAIL_REASON.SUCCESS
        thread = ticker._thread
    assert thread is not None and not thread.is_alive()
    assert threading.active_count() == threads
    assert all(_bindable(base + i) for i in range(3))
    after = _descriptors(tmp_path)
    # No socket, epoll, eventfd or journal left open (PySyncObj never closes its notifier pipes: not counted).
    assert after == descriptors, (descriptors, after)


def test_a_replica_whose_port_is_taken_starts_and_binds_once_it_is_free(tmp_path: Path) -> None:
    port = free_port_block(1, random.Random())
    addr = f"127.0.0.1:{port}"
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    with open_ticker() as ticker:
        started = time.monotonic()
        conf = _conf(tmp_path, "n0", addr, ticker)
        replica = ticker.start(lambda: _Replica(addr, [], conf, [ReplDict()], Durability.OS))
        assert time.monotonic() - started < 1.0  # PySyncObj alone loops in __init__ until it binds
        transport = replica._SyncObj__transport
        assert not transport.ready
        blocker.close()
        wait_until(lambda: transport.ready, "bound port")  # retried every bindRetryTime, from the ticks
        wait_until(replica._isLeader, "leader of a group of one")


# -- a node's groups ---------------------------------------------------------------------------------------


class _Register:
    def __init__(self) -> None:
        self.value: Any = None

    def apply(self, command: Any) -> Any:
        self.value = command
        return command


@contextmanager
def _one_node(tmp_path: Path, raft: RaftSettings) -> Iterator[dict[str, ReplicaGroup]]:
    """Three groups of one member each on one node: each elects itself."""
    base = free_port_block(3, random.Random())
    specs = [
        (GroupSpec(name=f"g{i}", self_id="a", members={"a": f"127.0.0.1:{base + i}"},
                   journal_path=tmp_path / f"g{i}.journal", dump_path=tmp_path / f"g{i}.dump",
                   raft=raft, durability=Durability.OS), _Register())
        for i in range(3)
    ]
    with open_replica_groups(specs, trio.lowlevel.current_trio_token()) as groups:
        yield groups


@pytest.mark.parametrize("one_tick_thread, poller, extra_threads", [
    (True, "epoll", 1), (False, "epoll", 3), (True, "select", 1),
])
async def test_a_nodes_groups_on_one_or_their_own_tick_threads(
    tmp_path: Path, one_tick_thread: bool, poller: str, extra_threads: int,
) -> None:
    raft = RaftSettings(election_timeout_min_s=0.31, election_timeout_max_s=0.5,
                        one_tick_thread=one_tick_thread, poller=poller)
    threads = threading.active_count()
    with _one_node(tmp_path, raft) as groups:
        assert threading.active_count() == threads + extra_threads
        for name, group in groups.items():
            with trio.fail_after(WAIT_S):
                while not group.is_leader():
                    await trio.sleep(0.01)
                assert await group.propose(name) == name
            assert group.machine.value == name  # type: ignore[attr-defined]
    assert threading.active_count() == threads


def test_raft_poller_is_checked() -> None:
    nodes = "".join(f'[[nodes]]\nid = "n{i}"\nrpc_port = {7101 + i}\nraft_port = {7211 + 10 * i}\n' for i in range(3))
    config = parse_config(nodes + '[raft]\none_tick_thread = false\npoller = "poll"\n', Path("c.toml"))
    assert (config.raft.one_tick_thread, config.raft.poller) == (False, "poll")
    assert config.raft.syncobj_options()["pollerType"] == "poll"
    assert RaftSettings().syncobj_options()["pollerType"] == "auto"  # PySyncObj has no epoll: its own default
    with pytest.raises(ConfigError, match=r"c\.toml: raft\.poller: must be one of 'epoll', 'poll', 'select', got 'kqueue'"):
        parse_config(nodes + '[raft]\npoller = "kqueue"\n', Path("c.toml"))
    with pytest.raises(ConfigError, match=r"raft\.one_tick_thread: expected bool"):
        parse_config(nodes + '[raft]\none_tick_thread = 1\n', Path("c.toml"))
