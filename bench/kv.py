"""Single-key put and get latency and throughput against a real local cluster.

    python -m bench.kv                         # throwaway 3-node cluster, default settings
    python -m bench.kv --config cluster.toml   # a cluster you already started (make up)
    python -m bench.kv --durability fsync      # sync every journal append before acknowledging
    python -m bench.kv --json                  # JSON instead of the table

Phases: 1 client issuing puts then gets one after another, then
``--concurrency`` clients (tasks spread over ``--procs`` client processes)
issuing puts, then gets, for ``--seconds`` each. Results also go to
bench/results/kv.json.
"""

from __future__ import annotations

import argparse
import sys

from bench.harness import run_phase
from bench.report import open_cluster, progress, write_report

COLUMNS = ("op", "clients", "client_procs", "ops", "errors", "ops_per_s", "p50_ms", "p99_ms", "max_ms")


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
    rows = []
    with open_cluster(args.config, {"durability": args.durability}) as (config, _cluster):
        for clients, procs in ((1, 1), (args.concurrency, args.procs)):
            for op in ("put", "get"):
                progress(f"{op}: {clients} client(s) in {min(procs, clients)} process(es) for {args.seconds}s ...")
                rows.append({"op": op, **run_phase(config, f"kv.{op}", {}, clients, procs, args.seconds)})
        report = {"bench": "kv", "durability": config.durability.value, "rows": rows}
    write_report("kv", report, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
