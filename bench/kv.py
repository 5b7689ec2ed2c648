"""Single-key put and get latency and throughput against a real local cluster.

    python -m bench.kv                         # throwaway 3-node cluster, default settings
    python -m bench.kv --config cluster.toml   # a cluster you already started (make up)
    python -m bench.kv --durability fsync      # sync every journal append before acknowledging
    python -m bench.kv --json                  # JSON instead of the table

Phases: 1 client issuing puts then gets one after another, then
``--concurrency`` clients (tasks spread over ``--procs`` client processes,
each process with its own connections) issuing puts, then gets, for
``--seconds`` each. Latencies are recorded in HDR histograms per process and
merged; figures are medians and tails, not means. Results also go to
bench/results/kv.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

import commit
from commit.config import ClusterConfig, load_config
from commit.localcluster import LocalCluster
from commit.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"
US_MAX = 60_000_000  # histogram range: 1 us .. 60 s


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, US_MAX, 3)


async def _run_clients(config: ClusterConfig, op: str, tasks: int, seconds: float, tag: str) -> dict[str, Any]:
    hist = _histogram()
    errors = 0
    count = 0
    async with commit.connect(config) as db:
        await db.put(f"{tag}-warm", 0)
        deadline = trio.current_time() + seconds

        async def worker(w: int) -> None:
            nonlocal errors, count
            i = 0
            while trio.current_time() < deadline:
                key = f"{tag}-{w}-{i % 1000}"
                t0 = time.perf_counter()
                try:
                    if op == "put":
                        await db.put(key, i)
                    else:
                        await db.get(key)
                except commit.ClusterError:
                    errors += 1
                    continue
                hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                count += 1
                i += 1

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(tasks):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - started
    return {"hist": hist.encode(), "count": count, "errors": errors, "elapsed": elapsed}


def _client_process(config_path: str, op: str, tasks: int, seconds: float, tag: str, out: Any) -> None:
    out.put(trio.run(_run_clients, load_config(config_path), op, tasks, seconds, tag))


def run_phase(config: ClusterConfig, op: str, clients: int, procs: int, seconds: float) -> dict[str, Any]:
    procs = max(1, min(procs, clients))
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_client_process, args=(str(config.path), op, n, seconds, f"{op}{clients}p{i}", queue))
        for i, n in enumerate(share)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    merged = _histogram()
    for r in results:
        merged.add(HdrHistogram.decode(r["hist"]))
    count = sum(r["count"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "op": op,
        "clients": clients,
        "client_procs": procs,
        "ops": count,
        "errors": sum(r["errors"] for r in results),
        "ops_per_s": count / elapsed,
        "p50_ms": merged.get_value_at_percentile(50) / 1000,
        "p99_ms": merged.get_value_at_percentile(99) / 1000,
        "max_ms": merged.get_max_value() / 1000,
    }


def run(config: ClusterConfig, concurrency: int, procs: int, seconds: float, progress: Any) -> list[dict[str, Any]]:
    rows = []
    for clients, n_procs in ((1, 1), (concurrency, procs)):
        for op in ("put", "get"):
            progress(f"{op}: {clients} client(s) in {min(n_procs, clients)} process(es) for {seconds}s ...")
            rows.append(run_phase(config, op, clients, n_procs, seconds))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="use this running cluster instead of a throwaway one")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2, help="client processes for the concurrent phase")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--durability", choices=("os", "fsync"), default="os",
                        help="durability mode of the throwaway cluster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cluster = None
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        if args.config:
            config = load_config(args.config)
        else:
            cluster = LocalCluster(Path(tmp), options={"durability": args.durability})
            cluster.start_all()
            trio.run(cluster.wait_ready)
            config = cluster.config
            progress(f"started a throwaway 3-node cluster in {tmp}")
        try:
            rows = run(config, args.concurrency, args.procs, args.seconds, progress)
        finally:
            if cluster is not None:
                cluster.stop()
    report = {"bench": "kv", "cpus": os.cpu_count(), "durability": config.durability.value, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kv.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(rows, ("op", "clients", "client_procs", "ops", "errors", "ops_per_s", "p50_ms", "p99_ms", "max_ms")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
