"""Closed-loop load from client processes, with latencies in HDR histograms.

A phase runs ``clients`` concurrent client tasks, spread over ``procs`` OS
processes (each with its own connections), for ``seconds``. Each task calls
a workload (``bench.workloads``, looked up by name so it can cross the
process boundary) in a loop; a call that returns normally is one operation
whose latency is recorded, one that raises ``commit.Conflict`` is counted as
an abort, any other ``commit.ClusterError`` as an error. Histograms are
merged across processes, so percentiles are of every operation.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

import commit
from bench import workloads
from commit.config import ClusterConfig, load_config

US_MAX = 60_000_000  # 1 us .. 60 s


def histogram() -> HdrHistogram:
    return HdrHistogram(1, US_MAX, 3)


async def _run_clients(config: ClusterConfig, workload: str, params: dict[str, Any], tasks: int,
                       seconds: float, tag: str) -> dict[str, Any]:
    hist = histogram()
    counts = {"ops": 0, "aborts": 0, "errors": 0}
    body = workloads.REGISTRY[workload]
    async with commit.connect(config) as db:
        state = await workloads.SETUP[workload](db, params, tag) if workload in workloads.SETUP else None
        deadline = trio.current_time() + seconds

        async def worker(w: int) -> None:
            i = 0
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                try:
                    await body(db, state, params, f"{tag}-{w}", i)
                except commit.Conflict:
                    counts["aborts"] += 1
                    continue
                except commit.ClusterError:
                    counts["errors"] += 1
                    continue
                finally:
                    i += 1
                hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                counts["ops"] += 1

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(tasks):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - started
    return {"hist": hist.encode(), "elapsed": elapsed, **counts}


def _client_process(config_path: str, workload: str, params: dict[str, Any], tasks: int, seconds: float,
                    tag: str, out: Any) -> None:
    out.put(trio.run(_run_clients, load_config(config_path), workload, params, tasks, seconds, tag))


def run_phase(config: ClusterConfig, workload: str, params: dict[str, Any], clients: int, procs: int,
              seconds: float) -> dict[str, Any]:
    procs = max(1, min(procs, clients))
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_client_process,
                    args=(str(config.path), workload, params, n, seconds, f"{workload}{clients}p{i}", queue))
        for i, n in enumerate(share)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    merged = histogram()
    for r in results:
        merged.add(HdrHistogram.decode(r["hist"]))
    ops = sum(r["ops"] for r in results)
    aborts = sum(r["aborts"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "clients": clients,
        "client_procs": procs,
        "ops": ops,
        "aborts": aborts,
        "errors": sum(r["errors"] for r in results),
        "abort_rate": aborts / (ops + aborts) if ops + aborts else 0.0,
        "ops_per_s": ops / elapsed,
        "p50_ms": merged.get_value_at_percentile(50) / 1000,
        "p99_ms": merged.get_value_at_percentile(99) / 1000,
        "max_ms": merged.get_max_value() / 1000,
    }
