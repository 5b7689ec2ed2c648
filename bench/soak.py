"""Memory and disk over a long run: does a node forget what it no longer needs? (issue 14, item 5)

    python -m bench.soak --transactions 200000   # about 20 minutes on the 2-core machine
    python -m bench.soak --quick                 # 5,000 transactions, under 2 minutes
    python -m bench.soak --forget-after-s 60     # the shipped retention (the throwaway cluster's is 5 s)

A throwaway 3-node cluster (``bench.report.open_cluster``) runs 2-shard transfers through ``db.run``,
the protocols taking turns, from ``--clients`` tasks. Every ``--every`` transactions, and a last time
once ``forget_after_s`` and a few forgetting rounds have passed after the end, each node is sampled: its
resident memory (``VmRSS`` of /proc/<pid>/status), its data directory's size, its ``2pc.log`` and
``acceptor.log`` sizes, and the decided outcomes its groups' leaders still hold (``node.status``). With
forgetting, the lines flatten once the retention is reached and the last sample falls back; without it,
they grow with the transactions. ``soak.json`` and ``soak.png`` go to ``--results`` (bench/results/).
The retention is short here so that a short run shows it; the compaction threshold is lowered with it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

import commit
from bench.report import RESULTS, open_cluster, progress
from commit.config import ClusterConfig, Limits
from commit.errors import CommitUnknown, Conflict
from commit.routing import keys_on_each_shard
from commit.tooling.admin import cluster_status
from commit.tooling.localcluster import LocalCluster
from consensus.errors import ClusterError

PROTOCOLS = ("2pc", "raft-2pc", "paxos-commit", "fast-paxos-commit", "3pc", "3pc-quorum")
QUICK_TRANSACTIONS = 5_000
SAMPLES = 40  # samples over a run unless --every says otherwise
ACCOUNTS_PER_SHARD = 200
START_BALANCE = 1_000
SETTLE_ROUNDS = 3  # forgetting rounds waited for after the retention, before the last sample
KB = 1024


def resident_kb(pid: int) -> int:
    """The process's resident set, from /proc/<pid>/status (``VmRSS``, in kB); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


async def sample(cluster: LocalCluster, done: int, started: float) -> dict[str, Any]:
    """One row per node: memory, disk, and the decided outcomes the groups it leads hold."""
    rows = await cluster_status(cluster.config)
    decided: dict[str, int] = {}
    for row in rows:
        if row.get("reachable") and row.get("role") == "leader":
            decided[row["node"]] = decided.get(row["node"], 0) + row.get("decided", 0)
    nodes = {}
    for node_id, proc in cluster.procs.items():
        node_dir = cluster.config.node_dir(node_id)
        nodes[node_id] = {"rss_kb": resident_kb(proc.pid), "disk_bytes": size_of(node_dir),
                          "twopc_log_bytes": size_of(node_dir / "2pc.log"),
                          "acceptor_log_bytes": size_of(node_dir / "acceptor.log"),
                          "decided_led": decided.get(node_id, 0)}
    return {"transactions": done, "elapsed_s": round(time.monotonic() - started, 1), "nodes": nodes}


class Load:
    """``--transactions`` transfers from ``--clients`` tasks; counts what each came to."""

    def __init__(self, db: commit.Database, accounts: list[list[str]], total: int, seed: int) -> None:
        self.db = db
        self.accounts = accounts
        self.total = total
        self.rng = random.Random(seed)
        self.started = 0
        self.done = 0
        self.counts = {"committed": 0, "conflict": 0, "unknown": 0, "error": 0}

    async def client(self) -> None:
        while self.started < self.total:
            i = self.started
            self.started += 1
            await self.one(PROTOCOLS[i % len(PROTOCOLS)])
            self.done += 1

    async def one(self, protocol: str) -> None:
        src, dst = (self.rng.choice(self.accounts[s]) for s in self.rng.sample(range(len(self.accounts)), 2))
        amount = self.rng.randint(1, 10)

        async def body(tx: commit.Transaction) -> None:
            a, b = (await tx.get(src)).value, (await tx.get(dst)).value
            tx.put(src, a - amount)
            tx.put(dst, b + amount)

        try:
            await self.db.run(body, protocol=protocol)
            self.counts["committed"] += 1
        except Conflict:
            self.counts["conflict"] += 1
        except CommitUnknown:
            self.counts["unknown"] += 1
        except ClusterError:
            self.counts["error"] += 1


async def soak(cluster: LocalCluster, args: argparse.Namespace,
               limits: Limits) -> tuple[list[dict[str, Any]], dict[str, int]]:
    config: ClusterConfig = cluster.config
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    async with commit.connect(config) as db:
        accounts = keys_on_each_shard("soak-", ACCOUNTS_PER_SHARD, config.shard_count)
        for name in (n for shard in accounts for n in shard):
            await db.put(name, START_BALANCE)
        load = Load(db, accounts, args.transactions, args.seed)
        samples.append(await sample(cluster, 0, started))
        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(load.client)
            next_at = args.every
            while load.done < args.transactions:
                await trio.sleep(limits.forget_interval_s / 4)
                if load.done >= next_at:
                    next_at += args.every
                    row = await sample(cluster, load.done, started)
                    samples.append(row)
                    rate = load.done / max(row["elapsed_s"], 1e-9)
                    progress(f"{load.done}/{args.transactions} transactions ({rate:.0f}/s): "
                             + ", ".join(f"{n} {v['rss_kb'] // KB} MB rss {v['disk_bytes'] // KB} kB disk "
                                         f"{v['decided_led']} decided" for n, v in row["nodes"].items()))
        progress(f"done: {load.counts}; waiting {limits.forget_after_s}s for the retention to pass ...")
        await trio.sleep(limits.forget_after_s + SETTLE_ROUNDS * limits.forget_interval_s)
        last = await sample(cluster, load.done, started)
        last["settled"] = True
        samples.append(last)
        progress("after the retention: " + ", ".join(
            f"{n} {v['rss_kb'] // KB} MB rss {v['disk_bytes'] // KB} kB disk {v['decided_led']} decided"
            for n, v in last["nodes"].items()))
    return samples, load.counts


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("rss_kb", "resident memory (MB)", KB), ("disk_bytes", "data directory (MB)", KB * KB),
              ("decided_led", "decided outcomes held (groups it leads)", 1))
    for ax, (key, label, unit) in zip(axes, panels):
        for node in samples[0]["nodes"]:
            ax.plot([s["transactions"] for s in samples], [s["nodes"][node][key] / unit for s in samples],
                    marker=".", label=node)
        ax.set_xlabel("transactions (the last point: after the retention)")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRANSACTIONS} transactions")
    parser.add_argument("--every", type=int, help=f"sample every this many transactions (default: {SAMPLES} samples)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--forget-after-s", type=float, default=5.0, help="limits.forget_after_s of the cluster")
    parser.add_argument("--compact-min-dead-records", type=int, default=1000,
                        help="limits.compact_min_dead_records of the cluster")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.transactions = QUICK_TRANSACTIONS
    args.every = args.every or max(1, args.transactions // SAMPLES)
    options = {"limits": {"forget_after_s": args.forget_after_s,
                          "compact_min_dead_records": args.compact_min_dead_records}}
    with open_cluster(None, options) as (config, cluster):
        assert cluster is not None
        samples, counts = trio.run(soak, cluster, args, config.limits)
    args.results.mkdir(parents=True, exist_ok=True)
    report = {"bench": "soak", "transactions": args.transactions, "clients": args.clients,
              "forget_after_s": args.forget_after_s, "protocols": list(PROTOCOLS), "counts": counts,
              "samples": samples}
    (args.results / "soak.json").write_text(json.dumps(report, indent=2))
    plot(samples, args.results / "soak.png")
    progress(f"wrote {args.results / 'soak.json'} and {args.results / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
