"""Peers measured side by side with the store: etcd (``bench.peers.etcd``) and bare PySyncObj
(``bench.peers.bare_raft``).

Both are driven the way ``bench.harness`` drives ours, so that their figures compare: ``clients``
closed-loop trio tasks spread over ``procs`` spawned OS processes; each process does its setup, then
all wait at a barrier and start together; the first ``warmup_s`` seconds are not recorded and an
operation is measured if it started in the ``seconds`` after them, recorded by the harness's own
``Recorder`` (HDR histograms, per-second rows); histograms are merged across processes. A phase
returns the keys of ``bench.harness.run_phase`` for a closed loop. This module holds that machinery;
each peer supplies a process body that connects, sets up, and hands ``closed_loop`` its operation.

The peers' clients do not retry: an operation that fails is an error (``PeerError``), one whose
optimistic compare fails is an abort (``Aborted``), so ``retries`` is always 0.
"""

from __future__ import annotations

import math
import multiprocessing
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from bench.harness import ABORT, DRAIN_S, ERROR, OK, SETUP_TIMEOUT_S, Recorder, summarize

# How often the parent looks for a client process that died (killed, out of memory) instead of reporting.
POLL_S = 0.5
# How long a client process that reported may take to exit before it is killed.
JOIN_S = 30.0


class Aborted(Exception):
    """An optimistic transaction lost a race (a failed compare): an abort, as ``commit.Conflict`` is."""


class PeerError(Exception):
    """The peer refused or failed a request, or the connection broke: an error, as ``commit.ClusterError`` is."""


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel says are free on ``host`` now (held open together, so all different).

    Another process may take one before the peer binds it; a peer that then fails to start says so.
    """
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


Op = Callable[[int, int], Awaitable[None]]  # op(task, i): operation i of client task ``task``
# body(*args, tasks, seconds, warmup_s, tag, barrier): one client process's run, ending in closed_loop.
Body = Callable[..., Awaitable[dict[str, Any]]]


async def closed_loop(tasks: int, op: Op, seconds: float, warmup_s: float, barrier: Any) -> dict[str, Any]:
    """Wait for the other processes, then run ``tasks`` closed-loop tasks calling ``op``; this process's result.

    Call it after the process's setup, so that every process's measured period starts together.
    """
    await trio.to_thread.run_sync(barrier.wait, SETUP_TIMEOUT_S)
    measure_from = trio.current_time() + warmup_s
    until = measure_from + seconds
    recorder = Recorder(measure_from, math.floor(seconds))

    async def worker(task: int) -> None:
        i = 0
        while (t0 := trio.current_time()) < until:
            try:
                await op(task, i)
                outcome = OK
            except Aborted:
                outcome = ABORT
            except PeerError:
                outcome = ERROR
            recorder.record(t0, trio.current_time(), outcome)
            i += 1

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(worker, task)
    return {**recorder.result(), "elapsed": trio.current_time() - measure_from}


def _client_process(body: Body, args: tuple[Any, ...], barrier: Any, out: Any) -> None:
    try:
        out.put(trio.run(partial(body, *args, barrier)))
    except BaseException:
        barrier.abort()  # the other processes stop waiting for this one at the start
        out.put({"error": traceback.format_exc()})


def run_client_processes(body: Body, args: tuple[Any, ...], clients: int, procs: int, seconds: float,
                         warmup_s: float, tag: str) -> dict[str, Any]:
    """Spawn the client processes, gather their results, and merge them as ``bench.harness.run_phase`` does.

    Process i runs ``body(*args, tasks, seconds, warmup_s, f"{tag}p{i}", barrier)``; ``body`` is
    module-level so that spawn can import it. A failure in any process fails the phase with its
    traceback; a process that dies without a word fails it at once, not after the whole timeout.
    """
    procs = max(1, min(procs, clients))
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(procs)
    workers = [ctx.Process(target=_client_process,
                           args=(body, (*args, n, seconds, warmup_s, f"{tag}p{i}"), barrier, out))
               for i, n in enumerate(share)]
    for w in workers:
        w.start()
    results: list[dict[str, Any]] = []
    give_up = time.monotonic() + SETUP_TIMEOUT_S + warmup_s + seconds + DRAIN_S
    try:
        while len(results) < len(workers):
            try:
                results.append(out.get(timeout=POLL_S))
            except queue_module.Empty:
                died = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if died:
                    raise RuntimeError(f"a client process exited with {died[0]} before reporting") from None
                if time.monotonic() > give_up:
                    raise RuntimeError("client processes did not report in time") from None
    finally:
        for w in workers:
            w.join(timeout=JOIN_S if len(results) == len(workers) else 0)
            if w.is_alive():
                w.kill()
                w.join()
    # The processes that only saw the barrier broken by a failed one come last, as in run_phase.
    failed = sorted((r["error"] for r in results if "error" in r), key=lambda e: "BrokenBarrierError" in e)
    if failed:
        raise RuntimeError(f"{len(failed)} client process(es) failed; the first:\n{failed[0]}")
    return summarize(clients, procs, seconds, warmup_s, results)


