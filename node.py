"""Node process entry point and operator CLI.

    python node.py start NODE_ID        run one node in the foreground
    python node.py up [--detach]        start every node of the config
    python node.py down [--clean]       stop nodes started with --detach
    python node.py status [--json]      one row per group replica
    python node.py trace TXID           a transaction's messages as a sequence diagram
    python node.py compact              force log compaction on every node
    python node.py fault cut A B        lose the RPC messages between nodes A and B (not Raft)
    python node.py fault heal [A [B]]   restore the A-B link, every link of A, or every link
    python node.py fault drop NODE M    NODE loses every RPC call of method M it sends
    python node.py fault undrop NODE [M]    NODE sends M (or every dropped method) again
    python node.py fault list [--json]  each node's cut links, dropped methods, lost messages

The ``fault`` commands need ``transactions.fault_hooks = true`` (see docs/OPERATIONS.md).

``--config PATH`` (default ``cluster.toml``) is accepted by every command.
Each node writes its log to ``<data_dir>/<node>/node.log`` and its pid to
``<data_dir>/<node>/node.pid`` while it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from commit.tooling.admin import (
    COUNTER_COLUMNS,
    IN_DOUBT_COLUMNS,
    STATUS_COLUMNS,
    TXN_COLUMNS,
    cluster_report,
    transaction_trace,
    leaderless_groups,
    node_call,
    wait_for_leaders,
)
from commit.config import ClusterConfig, ConfigError, load_config
from commit.tooling.fault_requests import link_requests
from commit.tooling.localcluster import spawn_node
from commit.node.serve import serve_node
from commit.tooling.tables import format_table
from commit.tooling.traces import sequence_diagram, summarize
from consensus.errors import ClusterError

STOP_GRACE_S = 10.0


def _pid_file(config: ClusterConfig, node_id: str) -> Path:
    return config.node_dir(node_id) / "node.pid"


def _log_file(config: ClusterConfig, node_id: str) -> Path:
    return config.node_dir(node_id) / "node.log"


def _configure_logging(config: ClusterConfig, node_id: str) -> None:
    handler = logging.FileHandler(_log_file(config, node_id))
    handler.setFormatter(logging.Formatter(f"%(asctime)s {node_id} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


async def _run_until_signalled(config: ClusterConfig, node_id: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, config, node_id)
            async for signum in signals:
                logging.getLogger("node").info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


def cmd_start(config: ClusterConfig, args: argparse.Namespace) -> int:
    config.node(args.node_id)
    config.node_dir(args.node_id).mkdir(parents=True, exist_ok=True)
    _configure_logging(config, args.node_id)
    pid_file = _pid_file(config, args.node_id)
    pid_file.write_text(str(os.getpid()))
    # Outside the trio signal receiver the node ignores these: a Ctrl-C in a terminal sends SIGINT to
    # every node and `up` then sends SIGTERM, and trio redelivers signals still pending when its
    # receiver closes, which with default handlers would kill the node half-way through shutdown.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    try:
        trio.run(_run_until_signalled, config, args.node_id)
    finally:
        pid_file.unlink(missing_ok=True)
        logging.getLogger("node").info("stopped")
    return 0


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for node_id, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{node_id} did not stop in {STOP_GRACE_S}s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def _endpoint_rows(config: ClusterConfig, rows: list[dict[str, Any]], procs: dict[str, subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    leads: dict[str, list[str]] = {}
    for row in rows:
        if row.get("role") == "leader":
            leads.setdefault(row["node"], []).append(row["group"])
    return [
        {
            "node": n.id,
            "rpc": f"{n.host}:{n.rpc_port}",
            "raft_ports": f"{n.raft_port}-{n.raft_port + len(config.groups()) - 1}",
            "pid": procs[n.id].pid,
            "leads": ",".join(leads.get(n.id, [])) or None,
            "log": str(_log_file(config, n.id)),
        }
        for n in config.nodes
    ]


def cmd_up(config: ClusterConfig, args: argparse.Namespace) -> int:
    running = [n.id for n in config.nodes if _running_pid(config, n.id) is not None]
    if running:
        print(f"already running: {', '.join(running)} (use 'python node.py down' first)", file=sys.stderr)
        return 1
    procs = {n.id: spawn_node(config, n.id, detach=args.detach) for n in config.nodes}
    print(f"started {len(procs)} nodes from {config.path}; data in {config.data_dir}", flush=True)
    try:
        rows = trio.run(wait_for_leaders, config, lambda line: print(line, flush=True))
        print(format_table(_endpoint_rows(config, rows, procs), ("node", "rpc", "raft_ports", "pid", "leads", "log")))
        if args.detach:
            print("running in the background; stop with: python node.py down", flush=True)
            return 0
        print("cluster ready; Ctrl-C stops every node", flush=True)
        _watch(procs)
    except trio.TooSlowError:
        print(f"no leader for every group within {config.timeouts.startup_s}s; see the node logs", file=sys.stderr)
        _stop(procs)
        return 1
    except KeyboardInterrupt:
        print("stopping...", flush=True)
    _stop(procs)
    print("all nodes stopped", flush=True)
    return 0


def _watch(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Report nodes that exit on their own; return once every node has exited."""
    reported: set[str] = set()
    while len(reported) < len(procs):
        for node_id, proc in procs.items():
            if node_id not in reported and proc.poll() is not None:
                print(f"{node_id} exited with code {proc.returncode}", flush=True)
                reported.add(node_id)
        time.sleep(0.2)


def _running_pid(config: ClusterConfig, node_id: str) -> int | None:
    try:
        pid = int(_pid_file(config, node_id).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_down(config: ClusterConfig, args: argparse.Namespace) -> int:
    pids = {n.id: pid for n in config.nodes if (pid := _running_pid(config, n.id)) is not None}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for node_id, pid in pids.items():
        while _running_pid(config, node_id) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if _running_pid(config, node_id) == pid:
            print(f"{node_id} (pid {pid}) did not stop in {STOP_GRACE_S}s; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {node_id} (pid {pid})")
    if not pids:
        print("no running nodes found")
    if args.clean and config.data_dir.exists():
        shutil.rmtree(config.data_dir)
        print(f"removed {config.data_dir}")
    return 0


def cmd_status(config: ClusterConfig, args: argparse.Namespace) -> int:
    report = trio.run(cluster_report, config)
    rows = report["groups"]
    missing = leaderless_groups(rows, config)
    if args.json:
        print(json.dumps({**report, "leaderless": missing}, indent=2))
    else:
        print(format_table(rows, STATUS_COLUMNS))
        if missing:
            print(f"\nno leader: {', '.join(missing)}")
        if report["transactions"]:
            print("\ntransactions by outcome")
            print(format_table(report["transactions"], TXN_COLUMNS))
        if report["counters"] and args.counters:
            print("\nprotocol messages sent and forced writes, per node")
            print(format_table(report["counters"], COUNTER_COLUMNS))
        print(f"\nin-doubt transactions: {len(report['in_doubt']) or 'none'}")
        if report["in_doubt"]:
            print(format_table(report["in_doubt"], IN_DOUBT_COLUMNS))
    return 0 if any(r.get("reachable") for r in rows) else 1


def cmd_trace(config: ClusterConfig, args: argparse.Namespace) -> int:
    events = trio.run(transaction_trace, config, args.txid)
    summary = summarize(events)
    if args.json:
        print(json.dumps({"txid": args.txid, **summary, "events": events}, indent=2))
        return 0 if events else 1
    if not events:
        print(f"no node remembers {args.txid}", file=sys.stderr)
        return 1
    print(sequence_diagram(events, [n.id for n in config.nodes]))
    print(f"\n{summary['messages']} protocol messages {summary['messages_by_type']}, "
          f"{summary['forced_writes']} forced writes {summary['forced_writes_by_type']}, "
          f"{summary['message_delays']} message delays (the client's request is delay 1)")
    return 0


def cmd_compact(config: ClusterConfig, args: argparse.Namespace) -> int:
    async def compact_all() -> None:
        for node in config.nodes:
            await node_call(config, node.id, "node.compact", {})
            print(f"{node.id}: log compaction requested")

    trio.run(compact_all)
    return 0


FAULT_COLUMNS = ("node", "cut", "dropped", "lost", "error")


def _fault_requests(config: ClusterConfig, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    node_ids = [n.id for n in config.nodes]
    if args.op == "cut":
        return link_requests("cut", args.a, args.b, node_ids)
    if args.op == "heal":
        if len(args.nodes) > 2:
            raise ValueError("heal takes no node, one node, or two nodes")
        a, b = (args.nodes + [None, None])[:2]
        return link_requests("heal", a, b, node_ids)
    if args.op == "drop":
        return [(args.node, {"op": "drop", "method": args.method})]
    if args.op == "undrop":
        params: dict[str, Any] = {"op": "undrop"}
        if args.method is not None:
            params["method"] = args.method
        return [(args.node, params)]
    return [(n, {"op": "list"}) for n in node_ids]


def cmd_fault(config: ClusterConfig, args: argparse.Namespace) -> int:
    try:
        requests = _fault_requests(config, args)
    except ValueError as exc:
        print(f"fault {args.op}: {exc}", file=sys.stderr)
        return 2
    for node_id, _ in requests:
        config.node(node_id)  # an unknown node is a ConfigError naming the known ones
    results: dict[str, dict[str, Any]] = {}

    async def send_all() -> None:
        for node_id, params in requests:
            try:
                results[node_id] = (await node_call(config, node_id, "test.fault", params))["faults"]
            except (ClusterError, trio.TooSlowError) as exc:
                results[node_id] = {"node": node_id, "error": str(exc) or type(exc).__name__}

    trio.run(send_all)
    rows = [results[n.id] for n in config.nodes if n.id in results]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = [{**row, "cut": ",".join(row.get("cut", [])) or None,
                  "dropped": ",".join(row.get("dropped", [])) or None} for row in rows]
        print(format_table(table, FAULT_COLUMNS))
    return 1 if any("error" in row for row in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="cluster config (default: cluster.toml)")
    parser = argparse.ArgumentParser(prog="node.py", description=__doc__.split("\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", parents=[common], help="run one node in the foreground")
    start.add_argument("node_id")
    start.set_defaults(func=cmd_start)
    up = sub.add_parser("up", parents=[common], help="start every node of the config")
    up.add_argument("--detach", action="store_true", help="run in the background with pid files")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", parents=[common], help="stop nodes started with --detach")
    down.add_argument("--clean", action="store_true", help="also remove the data directory")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", parents=[common], help="one row per group replica")
    status.add_argument("--json", action="store_true")
    status.add_argument("--counters", action="store_true", help="also protocol messages and forced writes per node")
    status.set_defaults(func=cmd_status)
    trace = sub.add_parser("trace", parents=[common], help="a transaction's messages as a sequence diagram")
    trace.add_argument("txid")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(func=cmd_trace)
    compact = sub.add_parser("compact", parents=[common], help="force log compaction on every node")
    compact.set_defaults(func=cmd_compact)
    fault = sub.add_parser("fault", parents=[common],
                           help="cut/heal RPC links, drop/undrop RPC methods (needs transactions.fault_hooks)")
    fault.set_defaults(func=cmd_fault)
    output = argparse.ArgumentParser(add_help=False, parents=[common])
    output.add_argument("--json", action="store_true")
    ops = fault.add_subparsers(dest="op", required=True)
    cut = ops.add_parser("cut", parents=[output], help="lose the RPC messages between A and B, both ways")
    cut.add_argument("a", metavar="A")
    cut.add_argument("b", metavar="B")
    heal = ops.add_parser("heal", parents=[output], help="restore the A-B link, every link of A, or every link")
    heal.add_argument("nodes", nargs="*", metavar="NODE")
    drop = ops.add_parser("drop", parents=[output], help="NODE loses every call of METHOD it sends")
    drop.add_argument("node", metavar="NODE")
    drop.add_argument("method", metavar="METHOD")
    undrop = ops.add_parser("undrop", parents=[output], help="NODE sends METHOD (or every dropped method) again")
    undrop.add_argument("node", metavar="NODE")
    undrop.add_argument("method", nargs="?", metavar="METHOD")
    ops.add_parser("list", parents=[output], help="each node's cut links, dropped methods, lost messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(getattr(args, "config", "cluster.toml"))
        return args.func(config, args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
