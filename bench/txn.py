"""Cross-shard transfers under every commit protocol in one run, and what a coordinator crash costs.

    python -m bench.txn                  # throwaway 3-node cluster
    python -m bench.txn --json

Part 1, throughput and latency: for 2 and 3 shards per transaction, each
protocol in turn runs ``--clients`` closed-loop clients doing transfer
attempts for ``--seconds`` (a transfer reads one account on each shard and
writes them all; a conflict counts as an abort, not retried). Protocols
alternate on the same cluster, so their ratio is what to read; each row also
gives the protocol messages, forced writes and message delays of one probe
transaction of that shape, read back from the nodes' traces.

Part 2, blocked time: for each protocol, a transfer is held at the
coordinator between the votes and the decision (a test hook), the
coordinator is killed -9, and we measure how long the participants keep the
transfer's locks. ``raft-2pc``, ``paxos-commit`` and both 3PC variants must
finish without the dead node; ``2pc`` cannot, so its coordinator is restarted after ``--outage`` seconds and the
figure includes that outage. Results also go to bench/results/txn.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import trio

import commit
from bench.harness import run_phase
from bench.report import open_cluster, progress, write_report
from commit.tooling.admin import transaction_trace
from commit.config import PROTOCOLS
from commit.tooling.localcluster import LocalCluster
from commit.routing import keys_on_each_shard
from commit.tooling.tables import format_table
from commit.tooling.traces import summarize

COLUMNS = ("protocol", "shards", "clients", "ops_per_s", "p50_ms", "p99_ms", "abort_rate", "msgs", "forced",
           "delays")
SETTLE_S = 1.0
CRASH_COLUMNS = ("protocol", "outcome", "blocked_s", "needed_restart")


async def _probe_costs(config: Any, protocol: str, shards: int) -> dict[str, int]:
    """One transfer over ``shards`` shards, and what the nodes' traces say it cost."""
    keys = [k[0] for k in keys_on_each_shard(f"probe-{protocol}-{shards}-", 1, config.shard_count)[:shards]]
    async with commit.connect(config) as db:
        async with db.transaction(protocol) as tx:
            for key in keys:
                tx.put(key, 1)
    await trio.sleep(SETTLE_S)  # let the decision messages and their traces land
    assert tx.txid is not None
    summary = summarize(await transaction_trace(config, tx.txid))
    return {"msgs": summary["messages"], "forced": summary["forced_writes"], "delays": summary["message_delays"]}


async def _blocked_time(cluster: LocalCluster, protocol: str, outage_s: float, round_: int) -> dict[str, Any]:
    src, dst = [keys[0] for keys in keys_on_each_shard(f"crash-{protocol}-{round_}-", 1, cluster.shards)[:2]]
    async with commit.connect(cluster.config) as db, trio.open_nursery() as nursery:
        victim = await cluster.coordinator_of(protocol)
        tx = await cluster.start_held_transfer(db, protocol, "coordinator.after_votes", src, dst, nursery)
        cluster.kill(victim)
        killed = time.monotonic()
        needed_restart = False
        try:
            await cluster.wait_unlocked(within_s=outage_s)
        except AssertionError:
            needed_restart = True
            cluster.start(victim)
            await cluster.wait_unlocked(within_s=60)
        blocked = time.monotonic() - killed
        outcome = await db.status(tx.txid, tx.participants)
        if not needed_restart:
            cluster.start(victim)
        await cluster.wait_ready()
        nursery.cancel_scope.cancel()
    return {"protocol": protocol, "outcome": outcome, "blocked_s": blocked, "needed_restart": needed_restart}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.txn", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts, one phase each")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--accounts-per-shard", type=int, default=200)
    parser.add_argument("--outage", type=float, default=5.0, help="how long the 2pc coordinator stays dead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    options = {"transactions": {"fault_hooks": True}}
    rows: list[dict[str, Any]] = []
    crashes: list[dict[str, Any]] = []
    with open_cluster(None, options) as (config, cluster):
        assert cluster is not None
        for clients in (int(c) for c in args.clients.split(",")):
            for shards in (2, 3):
                for protocol in PROTOCOLS:
                    progress(f"{protocol}: {shards}-shard transfers, {clients} clients for {args.seconds}s ...")
                    params = {"protocol": protocol, "shards": shards, "prefix": f"{protocol}-{shards}-{clients}-",
                              "accounts_per_shard": args.accounts_per_shard, "start_balance": 1000}
                    phase = run_phase(config, "txn.transfer", params, clients, args.procs, args.seconds)
                    costs = trio.run(_probe_costs, config, protocol, shards)
                    rows.append({"protocol": protocol, "shards": shards, **phase, **costs})
        for round_, protocol in enumerate(("raft-2pc", "paxos-commit", "3pc", "3pc-quorum", "2pc")):
            progress(f"{protocol}: kill -9 the coordinator between votes and decision ...")
            crashes.append(trio.run(_blocked_time, cluster, protocol, args.outage, round_))
    report = {"bench": "txn", "rows": rows, "coordinator_kill": crashes}
    write_report("txn", report, COLUMNS, args.json)
    if not args.json:
        print("\ncoordinator killed between votes and decision")
        print(format_table(crashes, CRASH_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
