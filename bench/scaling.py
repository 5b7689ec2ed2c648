"""``python -m bench.scaling``: throughput as concurrency grows, against etcd, in one run (issue 15).

    python -m bench.scaling                      # about 6 minutes; needs etcd (apt-get install etcd-server)
    python -m bench.scaling --transfer-clients 1,16,64 --bank-clients 16,64 --seconds 3
    python -m bench.scaling --json
    python -m bench.scaling --set raft.group_commit=false    # the same cluster without one of issue 15's steps

Every figure comes from one run on one throwaway cluster (3 nodes, 3 shards, durability ``os``) and one
local 3-member etcd with its data on tmpfs (the pairing with the same guarantee: an acknowledged write
survives kill -9, not power loss; ``bench.peers.etcd``), taking turns phase by phase, so their ratios
are what to read. Parts:

* ``transfer``: a 2-shard transfer under ``paxos-commit`` (two reads, two writes, one attempt: a conflict
  is an abort, as it is on etcd) against etcd's 2-key optimistic Txn over the same number of accounts, at
  each of ``--transfer-clients``: committed/s, p50 and p99, and the ratio;
* ``put``: single-key puts at each of ``--put-clients``, against etcd's;
* ``bank``: bank transfers with ``BANK_ACCOUNTS`` accounts, half cross-shard, retried until they commit,
  at each of ``--bank-clients`` (no etcd twin): committed/s and the abort rate.

Each of this store's rows also says what the nodes spent per committed operation: CPU milliseconds (all
nodes), the kernel's share of it, context switches and the threads per node (``bench.processes``).
The targets of issue 15 are checked at the end, each met or missed by its ratio. Writes ``scaling.json``
and ``scaling.png`` to ``--results``.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path
from typing import Any

from bench.peers.etcd import etcd_missing, open_etcd, run_etcd_phase
from bench.report import RESULTS, open_cluster, progress, write_report
from bench.suite import FULL, Settings, measured
from commit.tooling.localcluster import LocalCluster
from commit.tooling.tables import format_table

CLIENTS = (1, 16, 64, 256)
PUT_CLIENTS = (16, 64)
BANK_CLIENTS = (16, 64, 256)
BANK_ACCOUNTS = 1000  # issue 15: the abort rate at 64 clients on the bank workload with 1,000 accounts
SHARDS = 3
PROTOCOL = "paxos-commit"
PUT_KEYS = 1000
PER_SHARD = math.ceil(BANK_ACCOUNTS / SHARDS)
# (part, our workload, its params, etcd's params): the parts run on both, phase by phase
PEERED: tuple[tuple[str, str, dict[str, Any], dict[str, Any]], ...] = (
    ("transfer", "bank", {"cross_shard": 1.0, "protocol": PROTOCOL, "accounts_per_shard": PER_SHARD},
     {"accounts": PER_SHARD * SHARDS}),
    ("put", "kv.put", {}, {"keys": PUT_KEYS}),
)
SETTABLE = ("raft", "timeouts", "limits", "transactions")  # cluster.toml tables --set may change
COLUMNS = ("part", "clients", "ours_per_s", "etcd_per_s", "ratio", "ours_p50_ms", "etcd_p50_ms", "ours_p99_ms",
           "etcd_p99_ms", "abort_rate", "retry_rate", "cpu_ms", "system_share", "switches", "threads")


def _ours(row: dict[str, Any]) -> dict[str, Any]:
    return {"ours_per_s": round(row["ops_per_s"], 1), "ours_p50_ms": row["p50_ms"], "ours_p99_ms": row["p99_ms"],
            "abort_rate": row["abort_rate"], "retry_rate": round(row["retries"] / row["ops"], 4) if row["ops"] else 0.0,
            "cpu_ms": round(sum(row["cpu_ms_per_txn"].values()), 2),
            "system_share": row["system_share"], "switches": row["switches_per_txn"], "threads": row["node_threads"]}


def _theirs(row: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    return {"etcd_per_s": round(row["ops_per_s"], 1), "etcd_p50_ms": row["p50_ms"], "etcd_p99_ms": row["p99_ms"],
            "ratio": round(ours["ours_per_s"] / row["ops_per_s"], 2) if row["ops_per_s"] else None}


def _phase(cluster: LocalCluster, workload: str, params: dict[str, Any], clients: int, s: Settings,
           label: str) -> dict[str, Any] | None:
    """This store's figures for one phase, or None if a client process gave up (the row then says so)."""
    try:
        return _ours(measured(cluster, workload, params, clients, s, label))
    except RuntimeError as exc:  # past the peak the cluster may stop answering: a row, not the end of the run
        progress(f"{label} failed: {str(exc).splitlines()[-1]}")
        return None


def run(cluster: LocalCluster, s: Settings, clients: dict[str, tuple[int, ...]], root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    failed = {"ours_per_s": None, "error": "a client process gave up (see stderr)"}
    with open_etcd(root / "etcd", storage="tmpfs") as endpoints:
        for part, workload, params, etcd_params in PEERED:
            for n in clients[part]:
                progress(f"{part}: this store and etcd, {n} clients ...")
                ours = _phase(cluster, workload, {**params, "prefix": f"{part}{n}-"}, n, s, f"{part}, {n} clients")
                if ours is None:
                    rows.append({"part": part, "clients": n, **failed})
                    continue
                theirs = run_etcd_phase(endpoints, part, etcd_params, n, s.procs, s.seconds, warmup_s=s.warmup_s)
                rows.append({"part": part, "clients": n, **ours, **_theirs(theirs, ours)})
    for n in clients["bank"]:
        progress(f"bank: {PER_SHARD * SHARDS} accounts, half cross-shard, retried, {n} clients ...")
        ours = _phase(cluster, "bank", {"cross_shard": 0.5, "protocol": PROTOCOL, "retry": True,
                                        "accounts_per_shard": PER_SHARD, "prefix": f"bank{n}-"},
                      n, s, f"bank, {n} clients")
        rows.append({"part": "bank", "clients": n, **(ours or failed)})
    return rows


def _row(rows: list[dict[str, Any]], part: str, clients: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["part"] == part and r["clients"] == clients), None)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets, each with the measured figure and whether it was met (None: not measured)."""
    found = []

    def target(name: str, value: float | None, goal: float, at_most: bool = False) -> None:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        found.append({"target": name, "measured": value, "goal": f"{'<=' if at_most else '>='} {goal}", "met": met})

    for n in (16, 64):
        row = _row(rows, "transfer", n)
        target(f"transfers/s vs etcd, {n} clients", row.get("ratio") if row else None, 1.0)
    bank16 = _row(rows, "bank", 16)
    for n in (64, 256):
        row = _row(rows, "bank", n)
        value = round((row["ours_per_s"] or 0.0) / bank16["ours_per_s"], 2) if row and bank16 and bank16["ours_per_s"] \
            else None
        target(f"bank committed/s at {n} clients vs at 16", value, 1.0)
    row = _row(rows, "bank", 64)
    target("bank abort rate, 64 clients", row.get("abort_rate") if row else None, 0.05, at_most=True)
    row = _row(rows, "put", 64)
    target("puts/s vs etcd, 64 clients", row.get("ratio") if row else None, 1.0)
    row = _row(rows, "transfer", 1)
    target("one-client transfer p50 vs etcd", round(row["ours_p50_ms"] / row["etcd_p50_ms"], 2)
           if row and row.get("etcd_p50_ms") else None, 1.5, at_most=True)
    return found


def plot(rows: list[dict[str, Any]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    transfer = [r for r in rows if r["part"] == "transfer" and r["ours_per_s"] is not None]
    left.plot([r["clients"] for r in transfer], [r["ours_per_s"] for r in transfer], marker="o",
              label=f"this store ({PROTOCOL})")
    left.plot([r["clients"] for r in transfer], [r["etcd_per_s"] for r in transfer], marker="o", label="etcd Txn")
    left.set_xscale("log", base=2)
    left.set_xlabel("clients")
    left.set_ylabel("committed 2-key transfers/s")
    left.legend()
    bank = [r for r in rows if r["part"] == "bank" and r["ours_per_s"] is not None]
    right.plot([r["clients"] for r in bank], [r["ours_per_s"] for r in bank], marker="o", label="committed/s")
    right.set_xscale("log", base=2)
    right.set_xlabel("clients")
    right.set_ylabel(f"bank, {BANK_ACCOUNTS} accounts: committed/s")
    twin = right.twinx()
    twin.plot([r["clients"] for r in bank], [100 * r["abort_rate"] for r in bank], marker="x", color="gray",
              label="abort rate")
    twin.set_ylabel("abort rate (%)")
    fig.tight_layout()
    fig.savefig(out / "scaling.png")
    plt.close(fig)
    return "scaling.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    for part, default in (("transfer", CLIENTS), ("put", PUT_CLIENTS), ("bank", BANK_CLIENTS)):
        parser.add_argument(f"--{part}-clients", default=",".join(map(str, default)),
                            help=f"client counts of the {part} part, comma-separated")
    parser.add_argument("--seconds", type=float, default=FULL.seconds, help="measured seconds per phase")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a cluster.toml setting for the throwaway cluster (a TOML value), repeatable")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clients = {}
    for part in ("transfer", "put", "bank"):
        text = getattr(args, f"{part}_clients")
        try:
            clients[part] = tuple(int(c) for c in text.split(","))
        except ValueError:
            parser.error(f"--{part}-clients must be comma-separated integers, got {text!r}")
        if any(c < 1 for c in clients[part]):
            parser.error(f"--{part}-clients must be at least 1 each")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    missing = etcd_missing()
    if missing is not None:
        parser.error(missing)
    options: dict[str, Any] = {}
    for setting in args.set:
        name, _, text = setting.partition("=")
        section, _, key = name.partition(".")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            parser.error(f"--set {setting!r}: the value is not TOML (a string needs quotes)")
        if name == "cluster.durability":
            options["durability"] = value
        elif section in SETTABLE and key:
            options.setdefault(section, {})[key] = value
        else:
            parser.error(f"--set {setting!r}: expected cluster.durability or SECTION.KEY with a section of "
                         f"{', '.join(SETTABLE)}")
    s = Settings(**{**vars(FULL), "seconds": args.seconds})
    with open_cluster(None, options, shards=SHARDS) as (_, cluster):
        assert cluster is not None
        rows = run(cluster, s, clients, cluster.root)
    args.results.mkdir(parents=True, exist_ok=True)
    met = targets(rows)
    report = {"bench": "scaling", "protocol": PROTOCOL, "seconds": args.seconds, "settings": options,
              "rows": rows, "targets": met,
              "plots": [plot(rows, args.results)]}
    write_report("scaling", report, COLUMNS, args.json, args.results)
    if not args.json:
        print("\nissue 15 targets")
        print(format_table(met, ("target", "measured", "goal", "met")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
