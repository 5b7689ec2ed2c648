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
    python node.py saga list [--state S] [--json]   sagas, newest first
    python node.py saga show ID [--json]            one saga's history as a timeline
    python node.py saga retry|skip ID [--step S]    a stuck saga: call its op again, or count it done
    python node.py saga compensate ID               a saga before its pivot: undo what it did

The ``fault`` commands need ``transactions.fault_hooks = true`` (see docs/OPERATIONS.md).

``--config PATH`` (default ``cluster.toml``) is accepted by every command.
Each node writes its log to ``<data_dir>/<node>/node.log`` and its pid to
``<data_dir>/<node>/node.pid`` while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from commit.config import ClusterConfig, ConfigError, load_config
from commit.node.main import run_node_process
from commit.protocols.saga import SAGA_STATES
from commit.tooling.admin import (
    COUNTER_COLUMNS,
    IN_DOUBT_COLUMNS,
    STATUS_COLUMNS,
    TXN_COLUMNS,
    cluster_report,
    leaderless_groups,
    node_call,
    transaction_trace,
    wait_for_leaders,
)
from commit.tooling.fault_requests import operator_requests, send_fault_requests
from commit.tooling.saga_views import SAGA_COLUMNS, TIMELINE_COLUMNS, list_rows, saga_request, timeline_rows
from commit.tooling.supervise import (
    ENDPOINT_COLUMNS,
    endpoint_rows,
    running_nodes,
    start_nodes,
    stop_detached,
    stop_processes,
    watch,
)
from commit.tooling.tables import format_table
from commit.tooling.traces import sequence_diagram, summarize
from consensus.errors import ClusterError


def cmd_start(config: ClusterConfig, args: argparse.Namespace) -> int:
    return run_node_process(config.with_secrets(), args.node_id)


def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_up(config: ClusterConfig, args: argparse.Namespace) -> int:
    config = config.with_secrets()
    running = running_nodes(config)
    if running:
        _warn(f"already running: {', '.join(running)} (use 'python node.py down' first)")
        return 1
    procs = start_nodes(config, detach=args.detach)
    _say(f"started {len(procs)} nodes from {config.path}; data in {config.data_dir}")
    try:
        rows = trio.run(wait_for_leaders, config, _say)
        _say(format_table(endpoint_rows(config, rows, procs), ENDPOINT_COLUMNS))
        if args.detach:
            _say("running in the background; stop with: python node.py down")
            return 0
        _say("cluster ready; Ctrl-C stops every node")
        watch(procs, _say)
    except trio.TooSlowError:
        _warn(f"no leader for every group within {config.timeouts.startup_s}s; see the node logs")
        stop_processes(config, procs, _warn)
        return 1
    except KeyboardInterrupt:
        _say("stopping...")
    stop_processes(config, procs, _warn)
    _say("all nodes stopped")
    return 0


def cmd_down(config: ClusterConfig, args: argparse.Namespace) -> int:
    if not stop_detached(config, _say, clean=args.clean):
        _say("no running nodes found")
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


def cmd_fault(config: ClusterConfig, args: argparse.Namespace) -> int:
    try:
        requests = operator_requests(args.op, [n.id for n in config.nodes], args.nodes, args.method)
    except ValueError as exc:
        _warn(f"fault {args.op}: {exc}")
        return 2
    for node_id, _ in requests:
        config.node(node_id)  # an unknown node is a ConfigError naming the known ones
    rows = trio.run(send_fault_requests, config, requests)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = [{**row, "cut": ",".join(row.get("cut", [])) or None,
                  "dropped": ",".join(row.get("dropped", [])) or None} for row in rows]
        print(format_table(table, FAULT_COLUMNS))
    return 1 if any("error" in row for row in rows) else 0


def cmd_saga(config: ClusterConfig, args: argparse.Namespace) -> int:
    try:
        reply = trio.run(saga_request, config, args.op, getattr(args, "saga", None), getattr(args, "step", None),
                         getattr(args, "state", None))
    except ClusterError as exc:
        _warn(f"saga {args.op}: {exc}")
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
    elif args.op == "list":
        print(format_table(list_rows(reply, time.time()), SAGA_COLUMNS))
    elif args.op == "show":
        print(f"saga {reply['saga']}: {reply['state']}" + (f" ({reply['reason']})" if reply["reason"] else ""))
        print(format_table(timeline_rows(reply), TIMELINE_COLUMNS))
    else:
        print(f"saga {reply['saga']}: {args.op} accepted; it was {reply['state']}")
    return 0


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
    fault.set_defaults(func=cmd_fault, nodes=[], method=None)
    output = argparse.ArgumentParser(add_help=False, parents=[common])
    output.add_argument("--json", action="store_true")
    ops = fault.add_subparsers(dest="op", required=True)
    cut = ops.add_parser("cut", parents=[output], help="lose the RPC messages between A and B, both ways")
    cut.add_argument("nodes", nargs=2, metavar="NODE")
    heal = ops.add_parser("heal", parents=[output], help="restore the A-B link, every link of A, or every link")
    heal.add_argument("nodes", nargs="*", metavar="NODE")
    drop = ops.add_parser("drop", parents=[output], help="NODE loses every call of METHOD it sends")
    drop.add_argument("nodes", nargs=1, metavar="NODE")
    drop.add_argument("method", metavar="METHOD")
    undrop = ops.add_parser("undrop", parents=[output], help="NODE sends METHOD (or every dropped method) again")
    undrop.add_argument("nodes", nargs=1, metavar="NODE")
    undrop.add_argument("method", nargs="?", metavar="METHOD")
    ops.add_parser("list", parents=[output], help="each node's cut links, dropped methods, lost messages")
    saga = sub.add_parser("saga", parents=[common], help="list sagas, show one's history, act on a stuck one")
    saga.set_defaults(func=cmd_saga)
    saga_ops = saga.add_subparsers(dest="op", required=True)
    listing = saga_ops.add_parser("list", parents=[output], help="sagas, newest first")
    listing.add_argument("--state", choices=SAGA_STATES)
    show = saga_ops.add_parser("show", parents=[output], help="one saga's history as a timeline")
    show.add_argument("saga")
    for name, text in (("retry", "a stuck saga calls the op it is stuck on again"),
                       ("skip", "a stuck saga counts that op as done and goes on")):
        act = saga_ops.add_parser(name, parents=[output], help=text)
        act.add_argument("saga")
        act.add_argument("--step", help="the step it is stuck on (checked)")
    undo = saga_ops.add_parser("compensate", parents=[output], help="a saga before its pivot undoes what it did")
    undo.add_argument("saga")
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
