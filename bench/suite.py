"""The benchmark suite: every protocol and workload in one run, a concurrency sweep, crashes, and a peer.

    python -m bench run               # the full suite on a throwaway 5-shard cluster (docs/BENCHMARKS.md)
    python -m bench run --quick       # the same, small: under 3 minutes
    python -m bench run --peer etcd   # also etcd (apt-get install etcd-server) and bare PySyncObj, side by side
    python -m bench run --json

Why one run: a 2-core machine is noisy, so figures from separate runs do not compare. Protocols take turns
within each round (``--rounds``, the order rotated every round), and each figure is the merge of its
rounds: their ratios are what to read.

Parts, each a list of rows in ``results.json``:

* ``protocols``: per protocol and workload (bank transfers with half of them cross-shard, 2-shard writes,
  TPC-C-like New-Order) throughput, p50/p95/p99/max, abort and retry rates, and the CPU seconds each node
  spent per committed transaction, the share of it in the kernel and the context switches per committed
  transaction (``bench.processes``);
* ``ycsb``: YCSB A, B and F with scrambled zipfian keys (single-key operations: no commit protocol);
* ``shards``: write transactions over k = 1..5 shards per protocol (latency against shards per transaction);
* ``costs``: one probe transaction per protocol over 2 and 3 shards: messages, forced writes, message delays
  (from the nodes' traces) and Raft entries (commit indexes), each next to the registry's formula;
* ``open_loop``: bank transfers arriving at half (and, full size, 90%) of each protocol's closed-loop rate, latency
  measured from each one's intended start (coordinated omission corrected, as wrk2 does);
* ``sweep``: bank transfers at 1 to 256 clients per protocol: the peak, and whether it holds past it;
* ``crashes``: steady load, then kill -9 the protocol's coordinator (the coordinator group's leader; for
  ``2pc`` and 3PC, the coordinator node), restarted after the outage: the time from the fault until
  throughput is back to 90% and until no transaction is in doubt; then a shard leader killed -9, and one
  SIGSTOPped for 3 s;
* ``peer``: with ``--peer etcd``, puts, gets and a 2-key optimistic transfer on etcd (tmpfs data against
  durability ``os``), the same on this store, and a bare PySyncObj replicated dict: each as a ratio.

Every phase prints its per-second lines (CockroachDB ``workload`` style) to stderr as it goes. Plots:
``latency_cdf.png``, ``throughput_vs_clients.png``, ``latency_vs_shards.png``, ``crash_timeline.png``,
``peer.png`` in ``--results`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

import commit
from bench.harness import histogram, run_phase
from bench.processes import node_counters
from bench.report import RESULTS, open_cluster, progress, write_report
from bench.seconds import per_second_lines
from commit.config import COORDINATOR_GROUP
from commit.protocols.registry import PROTOCOLS, Coordinator
from commit.routing import keys_on_each_shard
from commit.tooling.admin import cluster_report, transaction_trace
from commit.tooling.localcluster import LocalCluster
from commit.tooling.tables import format_table
from commit.tooling.traces import summarize

SHARDS = 5  # k-shard transactions go up to 5
F = 1  # the coordinator group's 3 acceptors tolerate one failure
SETTLE_S = 3.0  # at most this long for a probe's decision messages and traces to land after its reply
SETTLE_POLL_S = 0.25
STOP_S = 3.0  # a shard leader SIGSTOPped this long
RECOVERED = 0.9  # throughput is back once it reaches this share of its level before the kill
FAULT_AT = 4  # the fault strikes this fraction (1/FAULT_AT) into a crash phase: time to see it recover
TPCC_WAREHOUSES = 4
RESOLVE_POLL_S = 0.2
# Through ``db.run`` (``retry``): a conflict is retried, and counted (``retry_rate``); an abort is a
# transaction that gave up. Throughput and latency are those of committed transactions, retries included.
PROTOCOL_WORKLOADS: dict[str, dict[str, Any]] = {
    "bank": {"workload": "bank", "cross_shard": 0.5, "retry": True},
    "2-shard writes": {"workload": "kshard", "k": 2, "retry": True},
    "new-order": {"workload": "neworder", "warehouses": TPCC_WAREHOUSES, "remote_fraction": 0.1, "retry": True},
}
SIZED = {"bank": "accounts_per_shard", "kshard": "keys_per_shard", "neworder": "items", "ycsb": "records"}
YCSB_MIXES = ("A", "B", "F")
COLUMNS = ("workload", "protocol", "clients", "ops_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "abort_rate",
           "retry_rate", "cpu_ms_per_txn")
COST_COLUMNS = ("protocol", "shards", "messages", "formula_messages", "forced_writes", "formula_forced_writes",
                "message_delays", "formula_message_delays", "raft_entries", "formula_raft_entries")
CRASH_COLUMNS = ("protocol", "fault", "victim", "before_per_s", "back_to_90pct_s", "in_doubt_resolved_s")


@dataclass(frozen=True)
class Settings:
    seconds: float
    warmup_s: float
    rounds: int
    clients: int
    procs: int
    sweep: tuple[int, ...]
    shards: tuple[int, ...]
    crash_seconds: float
    outage_s: float
    crashes: bool
    rows: int  # accounts per shard, keys per shard, TPC-C items, YCSB records: what each phase loads
    open_loads: tuple[float, ...]  # open-loop arrival rates, as shares of each protocol's closed-loop rate
    cost_shards: tuple[int, ...] = (2, 3)  # the shards of each protocol's probe transactions


QUICK = Settings(seconds=0.8, warmup_s=0.2, rounds=1, clients=4, procs=2, sweep=(1, 16), shards=(1, 5),
                 crash_seconds=7.0, outage_s=1.5, crashes=True, rows=200, open_loads=(0.5,))
FULL = Settings(seconds=5.0, warmup_s=1.0, rounds=3, clients=16, procs=2, sweep=(1, 4, 16, 64, 256),
                shards=(1, 2, 3, 4, 5), crash_seconds=16.0, outage_s=3.0, crashes=True, rows=1000,
                open_loads=(0.5, 0.9))
TINY = Settings(seconds=0.3, warmup_s=0.0, rounds=1, clients=2, procs=1, sweep=(2,), shards=(2,),
                crash_seconds=0.0, outage_s=0.0, crashes=False, rows=20, open_loads=(0.5,), cost_shards=(2,))


def measured(cluster: LocalCluster, workload: str, params: dict[str, Any], clients: int, s: Settings,
             label: str) -> dict[str, Any]:
    """One phase, its per-second lines shown as it ends, and the CPU each node spent per committed op."""
    if workload in SIZED:
        params = {SIZED[workload]: s.rows, **params}
    before = node_counters(cluster)
    result = run_phase(cluster.config, workload, params, clients, s.procs, s.seconds, warmup_s=s.warmup_s)
    spent = {n: c - before[n] for n, c in node_counters(cluster).items() if n in before}
    progress(f"-- {label}")
    for line in per_second_lines(result["seconds"]):
        progress(line)
    committed = max(1, result["committed"])
    result["cpu_ms_per_txn"] = {n: round(1000 * c.cpu_s / committed, 3) for n, c in spent.items()}
    cpu = sum(c.cpu_s for c in spent.values())
    result["system_share"] = round(sum(c.system_s for c in spent.values()) / cpu, 3) if cpu else 0.0
    result["switches_per_txn"] = round(sum(c.switches for c in spent.values()) / committed, 1)
    result["node_threads"] = max((c.threads for c in spent.values()), default=0)
    return result


def merged(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one (workload, protocol) as one row: ops summed, percentiles of every operation."""
    hist = histogram()
    for row in rows:
        hist.add(HdrHistogram.decode(row["hist"]))
    ops, aborts, retries = (sum(r[k] for r in rows) for k in ("ops", "aborts", "retries"))
    elapsed = sum(r["ops"] / r["ops_per_s"] for r in rows if r["ops_per_s"])
    cpu: dict[str, float] = {}
    for row in rows:
        for node, ms in row["cpu_ms_per_txn"].items():
            cpu[node] = cpu.get(node, 0.0) + ms / len(rows)
    return {
        "clients": rows[0]["clients"], "ops": ops, "committed": ops, "aborts": aborts, "retries": retries,
        "errors": sum(r["errors"] for r in rows),
        "ops_per_s": round(ops / elapsed, 1) if elapsed else 0.0,
        "abort_rate": round(aborts / (ops + aborts), 4) if ops + aborts else 0.0,
        "retry_rate": round(retries / ops, 4) if ops else 0.0,
        **{f"p{q}_ms": hist.get_value_at_percentile(q) / 1000 for q in (50, 95, 99)},
        "max_ms": hist.get_max_value() / 1000,
        "cpu_ms_per_txn": {n: round(v, 3) for n, v in cpu.items()},
        **{k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("system_share", "switches_per_txn")},
        "cdf": [[q, hist.get_value_at_percentile(q) / 1000] for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)],
        "hist": hist.encode(),
    }


def protocol_params(protocol: str, workload: dict[str, Any], tag: str) -> tuple[str, dict[str, Any]]:
    params = {k: v for k, v in workload.items() if k != "workload"}
    return workload["workload"], {**params, "protocol": protocol, "prefix": f"{tag}-"}


def interleaved(cluster: LocalCluster, s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every protocol x workload, and the YCSB mixes, in rounds whose protocol order rotates."""
    protocols = list(PROTOCOLS)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(s.rounds):
        order = protocols[round_ % len(protocols):] + protocols[:round_ % len(protocols)]
        for protocol in order:
            for name, workload in PROTOCOL_WORKLOADS.items():
                progress(f"round {round_ + 1}/{s.rounds}: {name} under {protocol}, {s.clients} clients ...")
                kind, params = protocol_params(protocol, workload, f"{kind_tag(name)}-{protocol}-r{round_}")
                runs.setdefault((name, protocol), []).append(
                    measured(cluster, kind, params, s.clients, s, f"{name}, {protocol}"))
        for mix in YCSB_MIXES:
            progress(f"round {round_ + 1}/{s.rounds}: YCSB {mix} (zipfian), {s.clients} clients ...")
            params = {"mix": mix, "distribution": "zipfian", "prefix": f"ycsb-{mix}-"}
            runs.setdefault((f"ycsb-{mix}", "-"), []).append(
                measured(cluster, "ycsb", params, s.clients, s, f"YCSB {mix}"))
    rows = [{"workload": w, "protocol": p, **merged(r)} for (w, p), r in runs.items()]
    return [r for r in rows if r["protocol"] != "-"], [r for r in rows if r["protocol"] == "-"]


def kind_tag(name: str) -> str:
    return name.replace(" ", "").replace("-", "")


def shards_phase(cluster: LocalCluster, s: Settings) -> list[dict[str, Any]]:
    rows = []
    for k in s.shards:
        for protocol in PROTOCOLS:
            progress(f"{k}-shard writes under {protocol} ...")
            result = measured(cluster, "kshard", {"k": k, "protocol": protocol, "prefix": f"k{k}-{protocol}-"},
                              s.clients, s, f"{k}-shard writes, {protocol}")
            rows.append({"workload": f"{k}-shard writes", "protocol": protocol, "shards": k, **merged([result])})
    return rows


def open_loop_phase(cluster: LocalCluster, s: Settings, protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bank transfers arriving at a fixed rate: latency from each transfer's intended start (coordinated
    omission corrected), so a stall shows as the queue it builds, not as fewer samples."""
    rows = []
    for protocol in PROTOCOLS:
        closed = next(r for r in protocols if r["workload"] == "bank" and r["protocol"] == protocol)
        for share in s.open_loads:
            rate = max(1.0, share * closed["ops_per_s"])
            progress(f"open loop: bank under {protocol} at {rate:.0f}/s ({share:.0%} of its closed-loop rate) ...")
            kind, params = protocol_params(protocol, PROTOCOL_WORKLOADS["bank"], f"open{share}-{protocol}")
            result = run_phase(cluster.config, kind, {SIZED[kind]: s.rows, **params}, s.clients, s.procs,
                               s.seconds, warmup_s=s.warmup_s, rate=rate)
            rows.append({"workload": "bank", "protocol": protocol, "load": share, "rate": round(rate, 1),
                         "late": result["late"], "scheduled": result["scheduled"],
                         **{k: result[k] for k in ("ops_per_s", "p50_ms", "p99_ms", "max_ms")}})
    return rows


OPEN_COLUMNS = ("protocol", "load", "rate", "ops_per_s", "p50_ms", "p99_ms", "max_ms", "late", "scheduled")


def sweep_phase(cluster: LocalCluster, s: Settings) -> list[dict[str, Any]]:
    rows = []
    for clients in s.sweep:
        for protocol in PROTOCOLS:
            progress(f"sweep: bank under {protocol}, {clients} clients ...")
            kind, params = protocol_params(protocol, PROTOCOL_WORKLOADS["bank"], f"sweep{clients}-{protocol}")
            try:
                result = measured(cluster, kind, params, clients, s, f"sweep {clients}, {protocol}")
            except RuntimeError as exc:  # a client process gave up: past the peak, the cluster may stop answering
                progress(f"sweep: bank under {protocol}, {clients} clients failed: {str(exc).splitlines()[-1]}")
                rows.append({"workload": "bank", "protocol": protocol, "clients": clients, "ops_per_s": None,
                             "error": str(exc).splitlines()[-1]})
                continue
            rows.append({"workload": "bank", "protocol": protocol, **merged([result])})
    return rows


async def _raft_entries(cluster: LocalCluster) -> int:
    """The sum of every group's commit index at its leader."""
    rows = await cluster.status()
    return sum(r["commit_index"] for r in rows if r.get("reachable") and r.get("role") == "leader")


async def _settled(read: Any) -> Any:
    """``await read()`` once two reads ``SETTLE_POLL_S`` apart agree (the decisions and acks of the last
    transaction land after its reply), or after ``SETTLE_S``."""
    last = await read()
    with trio.move_on_after(SETTLE_S):
        while True:
            await trio.sleep(SETTLE_POLL_S)
            now = await read()
            if now == last:
                break
            last = now
    return last


async def _probe(cluster: LocalCluster, protocol: str, n: int) -> dict[str, Any]:
    keys = [k[0] for k in keys_on_each_shard(f"probe-{protocol}-{n}-", 1, cluster.config.shard_count)[:n]]
    async with commit.connect(cluster.config) as db:
        before = await _settled(lambda: _raft_entries(cluster))
        async with db.transaction(protocol) as tx:
            for key in keys:
                tx.put(key, n)
        after = await _settled(lambda: _raft_entries(cluster))
    assert tx.txid is not None
    txid = tx.txid
    summary = await _settled(lambda: _trace_summary(cluster, txid))
    formula = PROTOCOLS[protocol].costs(n, F)
    return {"protocol": protocol, "shards": n, "messages": summary["messages"], "forced_writes": summary["forced_writes"],
            "message_delays": summary["message_delays"], "raft_entries": after - before,
            **{f"formula_{k}": getattr(formula, k) for k in ("messages", "forced_writes", "message_delays",
                                                              "raft_entries")}}


async def _trace_summary(cluster: LocalCluster, txid: str) -> dict[str, Any]:
    return summarize(await transaction_trace(cluster.config, txid))


async def costs_phase(cluster: LocalCluster, shards: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for protocol in PROTOCOLS:
        for n in shards:
            progress(f"costs: one {n}-shard transaction under {protocol} ...")
            rows.append(await _probe(cluster, protocol, n))
    return rows


async def _in_doubt(cluster: LocalCluster) -> int:
    return len((await cluster_report(cluster.config))["in_doubt"])


async def _victim(cluster: LocalCluster, protocol: str) -> str:
    if PROTOCOLS[protocol].coordinator is Coordinator.NODE:
        return cluster.config.twopc_coordinator
    return (await cluster.leaders())[COORDINATOR_GROUP]


def _recovery(seconds: list[dict[str, Any]], fault_at: float) -> tuple[float, float | None]:
    """Throughput before the fault (per second), and seconds after it until a second reaches 90% of it."""
    before = [r["ops"] for r in seconds if r["elapsed"] <= fault_at]
    level = sum(before) / len(before) if before else 0.0
    for row in seconds:
        if row["elapsed"] > fault_at and row["ops"] >= RECOVERED * level:
            return level, round(row["elapsed"] - fault_at, 1)
    return level, None


async def _fault(cluster: LocalCluster, fault: str, victim: str, at_s: float, outage_s: float) -> float:
    """Inject ``fault`` at ``at_s``; return once the in-doubt list is empty again: the seconds since the fault."""
    await trio.sleep(at_s)
    struck = trio.current_time()
    if fault == "SIGSTOP":
        cluster.pause(victim)
        await trio.sleep(STOP_S)
        cluster.resume(victim)
    else:
        cluster.kill(victim)
        await trio.sleep(outage_s)
        cluster.start(victim)
    await cluster.wait_ready()
    while await _in_doubt(cluster):
        await trio.sleep(RESOLVE_POLL_S)
    return round(trio.current_time() - struck, 1)


def crash_phase(cluster: LocalCluster, s: Settings) -> list[dict[str, Any]]:
    """Steady bank load with a fault a third of the way in; run in a thread beside the load processes."""
    plans = [(p, "kill -9 coordinator") for p in PROTOCOLS]
    plans += [("paxos-commit", "kill -9 shard leader"), ("paxos-commit", "SIGSTOP")]
    rows = []
    for protocol, fault in plans:
        victim = trio.run(_victim, cluster, protocol) if fault.endswith("coordinator") else \
            trio.run(cluster.leaders)["shard-0"]
        progress(f"crash: {fault} ({victim}) under steady {protocol} load ...")
        kind, params = protocol_params(protocol, PROTOCOL_WORKLOADS["bank"], f"crash-{protocol}-{kind_tag(fault)}")
        at_s = s.crash_seconds / FAULT_AT
        resolved: list[float] = []

        def inject(fault: str = fault, victim: str = victim) -> None:
            resolved.append(trio.run(_fault, cluster, "SIGSTOP" if fault == "SIGSTOP" else "kill", victim,
                                     at_s, s.outage_s))

        thread = threading.Thread(target=inject)
        thread.start()
        result = run_phase(cluster.config, kind, params, s.clients, s.procs, s.crash_seconds)
        thread.join()
        level, back = _recovery(result["seconds"], at_s)
        rows.append({"protocol": protocol, "fault": fault, "victim": victim, "before_per_s": round(level, 1),
                     "back_to_90pct_s": back, "in_doubt_resolved_s": resolved[0] if resolved else None,
                     "fault_at_s": at_s, "seconds": result["seconds"]})
        trio.run(cluster.wait_ready)
    return rows


# (etcd's workload, ours, our params): the same operations on keys both sides loaded, chosen uniformly
PEER_KEYS = 1000
PEER_WORKLOADS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("put", "kv.put", {}),
    ("ycsb-b", "ycsb", {"mix": "B", "distribution": "uniform", "records": PEER_KEYS}),
    ("transfer", "bank", {"cross_shard": 1.0, "protocol": "paxos-commit"}),
)


PAIRINGS = (("tmpfs", "os"), ("disk", "fsync"))  # etcd's data on tmpfs against durability os; on disk, fsync


def peer_phase(cluster: LocalCluster, s: Settings, root: Path) -> dict[str, Any]:
    """The same operations on etcd and on this store, in both durability pairings, and bare PySyncObj sets:
    each figure as a ratio to the peer's."""
    from bench.peers.bare_raft import run_bare_phase
    from bench.peers.etcd import etcd_missing, open_etcd, run_etcd_phase

    missing = etcd_missing()
    rows: list[dict[str, Any]] = []
    if missing is not None:
        progress(f"peer: skipped: {missing}")
        return {"skipped": missing, "rows": rows}
    for storage, durability in PAIRINGS:
        if durability != cluster.config.durability.value:
            (root / f"ours-{durability}").mkdir(parents=True, exist_ok=True)
        ours = cluster if durability == cluster.config.durability.value else \
            LocalCluster(root / f"ours-{durability}", shards=SHARDS, options={"durability": durability})
        if ours is not cluster:
            ours.start_all()
        try:
            if ours is not cluster:
                trio.run(ours.wait_ready)
            with open_etcd(root / f"etcd-{storage}", storage=storage) as endpoints:
                for name, workload, params in PEER_WORKLOADS:
                    progress(f"peer: {name}, etcd on {storage} against durability {durability}, {s.clients} clients ...")
                    theirs = run_etcd_phase(endpoints, name, {"keys": PEER_KEYS, "accounts": s.rows * SHARDS},
                                            s.clients, s.procs, s.seconds, warmup_s=s.warmup_s)
                    mine = measured(ours, workload, {**params, "prefix": f"peer-{name}-"}, s.clients, s,
                                    f"peer {name}, {durability}")
                    rows.append({"pairing": f"etcd {storage} / {durability}", **_versus(name, mine, theirs)})
        finally:
            if ours is not cluster:
                ours.stop()
    progress(f"peer: bare PySyncObj replicated dict, {s.clients} clients ...")
    bare = run_bare_phase(s.clients, s.procs, s.seconds, warmup_s=s.warmup_s)
    put = next(r for r in rows if r["op"] == "put")
    return {"rows": rows, "bare_pysyncobj": {k: bare[k] for k in ("ops_per_s", "p50_ms", "p99_ms")},
            "put_vs_bare_pysyncobj": round(put["ours_per_s"] / bare["ops_per_s"], 2) if bare["ops_per_s"] else None}


def _versus(name: str, mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {"op": name, "ours_per_s": round(mine["ops_per_s"], 1), "etcd_per_s": round(theirs["ops_per_s"], 1),
            "throughput_ratio": ratio(mine["ops_per_s"], theirs["ops_per_s"]),
            "ours_p50_ms": mine["p50_ms"], "etcd_p50_ms": theirs["p50_ms"],
            "p50_ratio": ratio(mine["p50_ms"], theirs["p50_ms"]),
            "ours_p99_ms": mine["p99_ms"], "etcd_p99_ms": theirs["p99_ms"],
            "p99_ratio": ratio(mine["p99_ms"], theirs["p99_ms"])}


PEER_COLUMNS = ("pairing", "op", "ours_per_s", "etcd_per_s", "throughput_ratio", "ours_p50_ms", "etcd_p50_ms", "p50_ratio",
                "p99_ratio")


def plots(report: dict[str, Any], out: Path) -> list[str]:
    """The PNGs people would rather look at than read; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in (r for r in report["protocols"] if r["workload"] == "bank"):
        qs, ms = zip(*row["cdf"])
        ax.plot(ms, qs, marker=".", label=row["protocol"])
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("percentile")
    ax.set_title("bank transfers: latency CDF per protocol")
    ax.legend()
    save(fig, "latency_cdf.png")

    def per_protocol(part: str, x: str, y: str, xlabel: str, ylabel: str, name: str, log2: bool) -> None:
        fig, ax = plt.subplots(figsize=(7, 4))
        for protocol in PROTOCOLS:
            ax.plot(*zip(*[(r[x], r[y]) for r in report[part] if r["protocol"] == protocol and r[y] is not None]),
                    marker="o", label=protocol)
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
        save(fig, name)

    per_protocol("sweep", "clients", "ops_per_s", "clients", "committed transfers/s", "throughput_vs_clients.png",
                 True)
    per_protocol("shards", "shards", "p50_ms", "shards per transaction", "p50 latency (ms)", "latency_vs_shards.png",
                 False)

    if report["crashes"]:
        fig, ax = plt.subplots(figsize=(9, 4))
        for row in report["crashes"]:
            ax.plot([r["elapsed"] for r in row["seconds"]], [r["ops"] for r in row["seconds"]],
                    label=f"{row['protocol']}: {row['fault']}")
        ax.axvline(report["crashes"][0]["fault_at_s"], color="black", linestyle="--", label="fault")
        ax.set_xlabel("seconds")
        ax.set_ylabel("committed/s")
        ax.legend(fontsize="small")
        save(fig, "crash_timeline.png")

    peer = report.get("peer", {}).get("rows")
    if peer:
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(peer))
        ax.bar([i - 0.2 for i in x], [r["ours_per_s"] for r in peer], width=0.4, label="this store")
        ax.bar([i + 0.2 for i in x], [r["etcd_per_s"] for r in peer], width=0.4, label="etcd")
        ax.set_xticks(list(x), [f"{r['op']}\n{r['pairing']}" for r in peer], fontsize="small")
        ax.set_ylabel("ops/s")
        ax.legend()
        save(fig, "peer.png")
    return written


HISTOGRAMMED = ("protocols", "ycsb", "shards", "sweep")


def _without_histograms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "hist"} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small: under 3 minutes")
    size.add_argument("--tiny", action="store_true", help="the test suite's size: every part but crashes and peer")
    parser.add_argument("--peer", choices=["etcd"], help="also measure etcd and bare PySyncObj")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results.json and the plots go")
    parser.add_argument("--resume", action="store_true",
                        help="keep the parts results.partial.json in --results already holds; run the others")
    args = parser.parse_args(argv)
    s = TINY if args.tiny else QUICK if args.quick else FULL
    args.results.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"bench": "suite", "settings": vars(s) | {"size": "tiny" if args.tiny else "quick"
                                                                        if args.quick else "full"}}
    partial = args.results / "results.partial.json"
    kept = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    if kept and kept.get("settings") != json.loads(json.dumps(report["settings"])):
        parser.error(f"{partial} was made with other settings: run without --resume")
    with open_cluster(None, {}, shards=SHARDS) as (_, started):
        assert started is not None
        cluster = started

        def keep(name: str, run: Callable[[], Any]) -> None:
            """Each part is kept as it ends: a failure later in a long run loses only what is left, and
            ``--resume`` runs only that."""
            if name in kept:
                progress(f"{name}: kept from {partial}")
            report[name] = kept[name] if name in kept else run()
            partial.write_text(json.dumps(
                {k: _without_histograms(v) if k in HISTOGRAMMED else v for k, v in report.items()}, indent=2))

        # First, while no transaction is older than limits.forget_after_s: a forgetting round's entry would
        # count in the probes' sums of commit indexes.
        keep("costs", lambda: trio.run(costs_phase, cluster, s.cost_shards))
        if "protocols" in kept and "ycsb" in kept:
            keep("protocols", list)
            keep("ycsb", list)
        else:
            protocols, ycsb = interleaved(cluster, s)
            keep("protocols", lambda: protocols)
            keep("ycsb", lambda: ycsb)
        keep("shards", lambda: shards_phase(cluster, s))
        keep("open_loop", lambda: open_loop_phase(cluster, s, report["protocols"]))
        keep("sweep", lambda: sweep_phase(cluster, s))
        keep("crashes", lambda: crash_phase(cluster, s) if s.crashes else [])
        if args.peer:
            keep("peer", lambda: peer_phase(cluster, s, cluster.root))
    args.results.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, args.results)
    for name in HISTOGRAMMED:
        report[name] = _without_histograms(report[name])
    write_report("results", {**report, "rows": report["protocols"]}, COLUMNS, args.json, args.results)
    if not args.json:
        for title, part, columns in (("YCSB (zipfian)", "ycsb", COLUMNS),
                                     ("bank transfers, open loop", "open_loop", OPEN_COLUMNS),
                                     ("costs per transaction", "costs", COST_COLUMNS),
                                     ("faults under steady load", "crashes", CRASH_COLUMNS)):
            print(f"\n{title}")
            print(format_table(report[part], columns))
        if report.get("peer", {}).get("rows"):
            print("\nagainst etcd on the same machine (ratios: this store / etcd)")
            print(format_table(report["peer"]["rows"], PEER_COLUMNS))
            print(f"bare PySyncObj replicated dict: {report['peer']['bare_pysyncobj']}; puts here are "
                  f"{report['peer']['put_vs_bare_pysyncobj']} x its rate")
    return 0
