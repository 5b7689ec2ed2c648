"""The node's one tick thread: all of a node's replicas ticked by one thread that waits in one epoll.

PySyncObj 0.3.17 gives every ``SyncObj`` its own tick thread (syncobj.py:280-286, ``_autoTickThread``
:576), which ticks, then waits in its own poll(2) (poller.py: poll or select, no epoll) for at most
``autoTickPeriod`` (0.05 s, config.py:30). A node hosts one replica per group, so it ran one such thread
per group, each waking every 50 ms, or at every event of its replica, and passing all of its descriptors
to the kernel at every wait.

Here (``raft.one_tick_thread``, the default) a replica is built with ``autoTick=False`` and subscribes
its sockets and its command notifier to the node's one poller, an ``EpollPoller`` (whose registrations
stay in the kernel), through ``LimitedTransportConf.poller`` (consensus.raft_transport). One thread
(``open_ticker``) loops: run what other threads handed it, tick (``doTick(0.0)``) every replica that had
an event since its last tick, and all of them once every ``period_s`` (their timers: elections,
heartbeats), then wait for any descriptor of any replica until the next such period. A command queued from the trio thread wakes that
wait at once: PySyncObj's notifier is a pipe subscribed to the replica's poller (syncobj.py:264), written
on every command (:499).

A replica's own poller is a view of the node's that waits for nothing: PySyncObj's tick ends in a poll
of it (syncobj.py:706), and N replicas would make N more system calls per round that the round's one
wait makes anyway.

All of PySyncObj runs on that thread. A replica is built there (``Ticker.start``): once its port is bound
the shared wait dispatches its events, and nothing may then run PySyncObj on another thread. It is
destroyed there too (``Ticker.stop``): without a tick thread ``destroy`` runs ``_doDestroy`` at once
(syncobj.py:300-303), which closes its sockets and journal; ``destroy_synchronous`` would join a tick
thread it does not have (:318). Leaving ``open_ticker`` joins the thread, then destroys any replica still
there, then closes the poller.

``OwnTickThread`` is the other way (``raft.one_tick_thread = false``): PySyncObj's own thread per
replica, waiting in an ``EpollPoller`` of its own, or in PySyncObj's poll or select (``raft.poller``).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from pysyncobj.poller import POLL_EVENT_TYPE, Poller, createPoller

from consensus.settings import POLLERS

log = logging.getLogger(__name__)

TICK_PERIOD_S = 0.05  # PySyncObj's autoTickPeriod default (pysyncobj/config.py:30): the longest wait between ticks
LOG_EVERY_S = 10.0  # one traceback per failing replica at most this often; PySyncObj logs one per tick period

Callback = Callable[[int, int], None]
T = TypeVar("T")


class Tickable(Protocol):
    """What the ticker needs of a ``SyncObj``."""

    def doTick(self, timeToWait: float = 0.0) -> None: ...  # noqa: N802,N803 (PySyncObj's names)

    def destroy(self) -> None: ...

    def destroy_synchronous(self) -> None: ...


R = TypeVar("R", bound=Tickable)


class EpollPoller(Poller):
    """PySyncObj's ``Poller`` (poller.py) on epoll(7), level-triggered, as its ``PollPoller`` is on poll(2).

    Masks map as ``PollPoller`` maps them: READ, WRITE and ERROR subscribe EPOLLIN, EPOLLOUT and EPOLLERR;
    EPOLLIN reports READ, EPOLLOUT WRITE, EPOLLERR or EPOLLHUP (reported whatever the mask) ERROR. A
    descriptor already subscribed is modified. Unlike ``PollPoller``, a descriptor unsubscribed while a
    poll dispatches its events gets none of them later in that round (PySyncObj unsubscribes in
    callbacks, and a new socket may take the closed one's number in the same round).

    epoll keeps a registration per open file, not per number: a descriptor must be unsubscribed before it
    is closed, or a copy of it (a forked child's) keeps reporting under its old number (``LimitedConnection
    .disconnect``). Not thread-safe: one thread subscribes and polls. ``close`` releases the epoll file.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callback] = {}
        self._dropped: set[int] = set()  # unsubscribed during the current dispatch

    def subscribe(self, descr: int, callback: Callback, eventMask: int) -> None:  # noqa: N803 (PySyncObj's name)
        mask = 0
        if eventMask & POLL_EVENT_TYPE.READ:
            mask |= select.EPOLLIN
        if eventMask & POLL_EVENT_TYPE.WRITE:
            mask |= select.EPOLLOUT
        if eventMask & POLL_EVENT_TYPE.ERROR:
            mask |= select.EPOLLERR
        if descr in self._callbacks:
            try:
                self._epoll.modify(descr, mask)
            except FileNotFoundError:  # closed without unsubscribe, and the number reused: the kernel forgot it
                self._epoll.register(descr, mask)
        else:
            try:
                self._epoll.register(descr, mask)
            except FileExistsError:
                self._epoll.modify(descr, mask)
        self._callbacks[descr] = callback

    def unsubscribe(self, descr: int) -> None:
        if self._callbacks.pop(descr, None) is None:
            return
        self._dropped.add(descr)
        try:
            self._epoll.unregister(descr)
        except (OSError, ValueError):  # already closed (the kernel dropped it with the file), or the poller is
            pass

    def poll(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds (epoll takes seconds, as PySyncObj's callers give them; poll(2)
        takes milliseconds, hence ``PollPoller``'s ``timeout * 1000``, poller.py:88) and dispatch."""
        events = self._epoll.poll(timeout)
        self._dropped.clear()
        for descr, event in events:
            callback = self._callbacks.get(descr)
            if callback is None or descr in self._dropped:
                continue
            mask = 0
            if event & select.EPOLLIN:
                mask |= POLL_EVENT_TYPE.READ
            if event & select.EPOLLOUT:
                mask |= POLL_EVENT_TYPE.WRITE
            if event & (select.EPOLLERR | select.EPOLLHUP):
                mask |= POLL_EVENT_TYPE.ERROR
            callback(descr, mask)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def close(self) -> None:
        self._callbacks.clear()
        self._epoll.close()


def make_poller(kind: str) -> Poller:
    """A poller for ``raft.poller``: ours for "epoll", PySyncObj's own for "poll" and "select"."""
    if kind not in POLLERS:
        raise ValueError(f"unknown poller {kind!r}; one of {POLLERS}")
    return EpollPoller() if kind == "epoll" else createPoller(kind)


def _close_poller(poller: Poller) -> None:
    close = getattr(poller, "close", None)  # PySyncObj's pollers hold no descriptor
    if close is not None:
        close()


class _ReplicaPoller(Poller):
    """A replica's view of the node's poller: it subscribes there, and its own poll waits for nothing.

    PySyncObj ends every tick with ``self._poller.poll(timeToWait)`` (syncobj.py:706); the ticker waits
    once per round for all replicas instead, and dispatches every replica's events from that one wait.
    ``woken`` says that one of this replica's descriptors had an event since its last tick: PySyncObj
    handles a message in the callback and acts on it (commit index, apply, AppendEntries) in the next
    tick, so only a woken replica needs one at once; the others wait for their period.
    """

    def __init__(self, shared: Poller) -> None:
        self._shared = shared
        self.woken = True

    def subscribe(self, descr: int, callback: Callback, eventMask: int) -> None:  # noqa: N803
        def woken(descr: int, event: int) -> None:
            self.woken = True
            callback(descr, event)

        self._shared.subscribe(descr, woken, eventMask)

    def unsubscribe(self, descr: int) -> None:
        self._shared.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        pass


class _Call:
    """A function handed to the tick thread, and its outcome for the thread that waits for it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # it belongs to the caller, not to the tick thread
            self._error = exc
        finally:
            self._done.set()

    def outcome(self) -> Any:
        self._done.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result


class Ticker:
    """The node's tick thread and its poller; made and run by ``open_ticker``."""

    def __init__(self, poller: Poller, period_s: float = TICK_PERIOD_S) -> None:
        self.poller = poller
        self.period_s = period_s
        self._replicas: tuple[Tickable, ...] = ()  # replaced, never mutated: a tick may start or stop one
        self._lock = threading.Lock()  # guards the three below
        self._calls: list[_Call] = []
        self._running = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failures: dict[int, tuple[float, int]] = {}  # id(replica) -> (last logged, failures not logged)
        self._next_tick_all = 0.0  # every replica is ticked at least once a period, for its timers
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        poller.subscribe(self._wake_fd, self._woken, POLL_EVENT_TYPE.READ)

    def conf_options(self) -> dict[str, Any]:
        """``LimitedTransportConf`` keywords for a replica this ticker ticks."""
        return {"autoTick": False, "poller": _ReplicaPoller(self.poller)}

    def run_sync(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the tick thread, between two ticks, and its result here; here if the thread is not running."""
        if threading.current_thread() is self._thread:
            return fn()
        call = _Call(fn)
        with self._lock:
            queued = self._running
            if queued:
                self._calls.append(call)
        if not queued:
            return fn()
        os.eventfd_write(self._wake_fd, 1)
        result: T = call.outcome()
        return result

    def start(self, build: Callable[[], R]) -> R:
        """Build a replica on the tick thread, and tick it from then on."""

        def started() -> R:
            replica = build()
            self._replicas += (replica,)
            return replica

        return self.run_sync(started)

    def stop(self, replica: Tickable) -> None:
        """Stop ticking ``replica`` and destroy it (sockets, journal) on the tick thread; again, nothing."""

        def stopped() -> None:
            if not any(r is replica for r in self._replicas):
                return
            self._replicas = tuple(r for r in self._replicas if r is not replica)
            self._failures.pop(id(replica), None)
            replica.destroy()

        self.run_sync(stopped)

    # -- the thread ------------------------------------------------------------------------------------

    def _begin(self) -> None:
        # A daemon, joined by open_ticker: one whose main thread ended without unwinding does not hang the
        # process, as PySyncObj's own tick thread ends with the main thread (syncobj.py:587-588).
        self._thread = threading.Thread(target=self._run, name="raft-ticker", daemon=True)
        with self._lock:
            self._running = True
        self._thread.start()

    def _end(self) -> None:
        if self._thread is not None:
            with self._lock:
                self._stopping = True
            os.eventfd_write(self._wake_fd, 1)
            self._thread.join()
        replicas, self._replicas = self._replicas, ()
        for replica in replicas:
            try:
                replica.destroy()
            except Exception:
                log.exception("failed to destroy a replica after its tick thread stopped")
        self.poller.unsubscribe(self._wake_fd)
        os.close(self._wake_fd)
        _close_poller(self.poller)

    def _run(self) -> None:
        try:
            while self._round():
                pass
        finally:
            with self._lock:
                self._running = False  # from now on run_sync runs in its caller
                calls, self._calls = self._calls, []
            for call in calls:
                call.run()

    def _round(self) -> bool:
        with self._lock:
            calls, self._calls = self._calls, []
            stopping = self._stopping
        for call in calls:
            call.run()
        if stopping:
            return False
        now = time.monotonic()
        due = now >= self._next_tick_all
        if due:
            self._next_tick_all = now + self.period_s
        for replica in self._replicas:
            view = getattr(replica, "_poller", None)
            if isinstance(view, _ReplicaPoller):  # a replica on another poller cannot say: ticked every round
                if not (due or view.woken):
                    continue
                view.woken = False
            try:
                replica.doTick(0.0)
            except Exception:  # as PySyncObj's tick thread: log and go on (syncobj.py:592-597)
                self._failed(replica, "a replica's tick failed")
        try:
            self.poller.poll(max(0.0, self._next_tick_all - time.monotonic()))
        except Exception:  # a callback's; PySyncObj then waits a tick period (syncobj.py:597), lest it spin
            self._failed(self.poller, "a replica's socket callback failed")
            time.sleep(self.period_s)
        return True

    def _woken(self, descr: int, event: int) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _failed(self, what: object, message: str) -> None:
        """``log.exception``, at most once every ``LOG_EVERY_S`` for each replica (PySyncObj's tick thread
        logs every failure and sleeps a tick period after it, which one thread for all replicas cannot)."""
        now = time.monotonic()
        last, skipped = self._failures.get(id(what), (None, 0))
        if last is not None and now - last < LOG_EVERY_S:
            self._failures[id(what)] = (last, skipped + 1)
            return
        self._failures[id(what)] = (now, 0)
        node = getattr(what, "selfNode", None)
        log.exception("%s%s%s", message, f" ({node})" if node is not None else "",
                      f" (and {skipped} more times since the last such line)" if skipped else "")


@contextmanager
def open_ticker(poller: str = "epoll", period_s: float = TICK_PERIOD_S) -> Iterator[Ticker]:
    """Start the node's tick thread on a new poller (``raft.poller``); on exit join it, then destroy any
    replica still there and close the poller."""
    ticker = Ticker(make_poller(poller), period_s)
    try:
        ticker._begin()
        yield ticker
    finally:
        ticker._end()


class OwnTickThread:
    """A replica on PySyncObj's own tick thread (``raft.one_tick_thread = false``), in a poller of its own."""

    def __init__(self, poller: str) -> None:
        if poller not in POLLERS:
            raise ValueError(f"unknown poller {poller!r}; one of {POLLERS}")
        # "poll" and "select" come to PySyncObj as pollerType (RaftSettings.syncobj_options)
        self._poller = EpollPoller() if poller == "epoll" else None

    def conf_options(self) -> dict[str, Any]:
        return {} if self._poller is None else {"poller": self._poller}

    def start(self, build: Callable[[], R]) -> R:
        try:
            return build()
        except BaseException:
            self._close()
            raise

    def stop(self, replica: Tickable) -> None:
        """Destroy ``replica``, joining its tick thread (syncobj.py:313-318), then close its poller."""
        try:
            replica.destroy_synchronous()
        finally:
            self._close()

    def _close(self) -> None:
        if self._poller is not None:
            self._poller.close()
