"""``python -m chaos``: Jepsen-style runs against a throwaway cluster (docs/RELIABILITY.md).

    python -m chaos run --protocol paxos-commit --workload list-append --nemesis kill,pause,partition \\
        --seconds 30 --seed 7                     # one run; prints its seed and the checker's verdict
    python -m chaos suite --seconds 20            # every protocol x bank and list-append, combined nemeses
    python -m chaos check RUN_DIR                 # check a kept history again (history.jsonl + summary.json)
    python -m chaos plot RUN_DIR ... --out t.png  # ops/s over time with the faults as bands (chaos.timeline)

Partitions need iptables and root (``apt-get install iptables``); without them a run says so and leaves
them out. Every run writes ``history.jsonl``, ``nemesis.jsonl`` and ``summary.json`` to its directory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from chaos.history import History
from chaos.nemesis import DEFAULT_KINDS, KINDS
from chaos.runner import WORKLOADS, RunSpec, RunSummary, check, run_chaos
from chaos.workloads import ACCOUNT_BALANCE, LIST_KEYS
from commit.protocols.mutants import NAMES as MUTANTS
from commit.protocols.registry import PROTOCOLS
from commit.tooling.tables import format_table

SUITE_PROTOCOLS = ("raft-2pc", "paxos-commit", "fast-paxos-commit", "2pc", "3pc-quorum", "3pc")
SUITE_WORKLOADS = ("bank", "list-append")
COLUMNS = ("protocol", "workload", "seed", "ok", "fail", "info", "anomalies", "lost", "longest_gap_s", "verdict")
WINDOW_COLUMNS = ("kind", "target", "nodes", "duration_s", "longest_gap_s", "first_ok_after_heal_s")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def row(summary: RunSummary) -> dict[str, Any]:
    """One line of the summary table: counts, anomalies by type, lost writes, the worst unavailability."""
    kinds: dict[str, int] = {}
    for anomaly in summary.verdict.anomalies:
        kinds[anomaly.type] = kinds.get(anomaly.type, 0) + 1
    verdict = "valid" if summary.valid else "INVALID (expected: 3pc splits)" if summary.expected_anomalies \
        else "INVALID"
    return {"protocol": summary.spec.protocol, "workload": summary.spec.workload, "seed": summary.spec.seed,
            **summary.ops, "anomalies": ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "-",
            "lost": summary.lost_acknowledged,
            "longest_gap_s": max((w["longest_gap_s"] for w in summary.windows), default=0.0), "verdict": verdict}


def _nemeses(text: str) -> tuple[str, ...]:
    chosen = tuple(n for n in text.split(",") if n)
    unknown = [n for n in chosen if n not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown nemesis {unknown}: choose from {', '.join(KINDS)}")
    return chosen


def _print(summaries: list[RunSummary], as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.to_json() for s in summaries], indent=2))
        return
    print(format_table([row(s) for s in summaries], COLUMNS))
    for s in summaries:
        if s.windows:
            print(f"\n{s.spec.protocol} / {s.spec.workload}: unavailability per nemesis event (s)")
            print(format_table([{**w, "nodes": ",".join(w["nodes"])} for w in s.windows], WINDOW_COLUMNS))
    for s in summaries:
        if not s.verdict.valid:
            print(f"\n{s.spec.protocol} / {s.spec.workload} (seed {s.spec.seed}, {s.directory}):")
            print(s.verdict.summary())
        for skipped in s.skipped:
            print(f"skipped {skipped}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "suite"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=float, default=30.0)
        p.add_argument("--operations", type=int, default=0, help="stop after this many operations (0: by time)")
        p.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
        p.add_argument("--nemesis", type=_nemeses, default=DEFAULT_KINDS,
                       help=f"comma-separated, from {','.join(KINDS)} (default {','.join(DEFAULT_KINDS)})")
        p.add_argument("--clients", type=int, default=6)
        p.add_argument("--nodes", type=int, default=3)
        p.add_argument("--accounts", type=int, default=8, help="bank accounts (fewer: more contention)")
        p.add_argument("--keys", type=int, default=LIST_KEYS, help="list-append keys in use at once")
        p.add_argument("--out", type=Path, default=None, help="where the runs' directories go")
        p.add_argument("--json", action="store_true")
    run = sub.choices["run"]
    run.add_argument("--protocol", choices=list(PROTOCOLS), default="paxos-commit")
    run.add_argument("--workload", default="list-append", help=f"{', '.join(WORKLOADS)}, or several joined by +")
    run.add_argument("--mutant", choices=MUTANTS, default="", help="a deliberately broken build, to see it caught")
    suite = sub.choices["suite"]
    suite.add_argument("--protocols", default=",".join(SUITE_PROTOCOLS))
    suite.add_argument("--workloads", default=",".join(SUITE_WORKLOADS))
    checking = sub.add_parser("check")
    checking.add_argument("directory", type=Path)
    plotting = sub.add_parser("plot")
    plotting.add_argument("directories", type=Path, nargs="+")
    plotting.add_argument("--out", type=Path, default=Path("timeline.png"))
    plotting.add_argument("--window", default=None, metavar="START:END", help="seconds of each run to show")
    args = parser.parse_args(argv)

    if args.command == "plot":
        from chaos.timeline import plot_runs

        missing = [str(d) for d in args.directories if not (d / "history.jsonl").exists()]
        if missing:
            parser.error(f"no history.jsonl in {', '.join(missing)}: not a kept run")
        window = None
        if args.window:
            try:
                start, end = (float(x) for x in args.window.split(":"))
            except ValueError:
                parser.error(f"--window must be START:END in seconds, got {args.window!r}")
            if not 0 <= start < end:
                parser.error(f"--window {args.window}: need 0 <= START < END")
            window = (start, end)
        print(plot_runs(args.directories, args.out, window))
        return 0

    if args.command == "check":
        spec = json.loads((args.directory / "summary.json").read_text())["spec"]
        accounts = [f"acct-{i}" for i in range(spec["accounts"])]
        verdict = check(spec["workload"], History.read_jsonl(args.directory / "history.jsonl"), accounts,
                        ACCOUNT_BALANCE * len(accounts))
        print(json.dumps(verdict.to_json(), indent=2) if args.json else verdict.summary())
        return 0 if verdict.valid else 1

    seed = args.seed if args.seed is not None else random.randrange(10 ** 6)
    print(f"seed {seed} (replay with --seed {seed})", file=sys.stderr)
    if args.command == "run":
        plan = [(args.protocol, args.workload)]
    else:
        plan = [(p, w) for p in args.protocols.split(",") for w in args.workloads.split(",")]
    summaries = []
    for i, (protocol, workload) in enumerate(plan):
        spec = RunSpec(protocol, workload, args.nemesis, args.seconds, seed + i, clients=args.clients,
                       nodes=args.nodes, operations=args.operations, mutant=getattr(args, "mutant", ""),
                       accounts=args.accounts, keys=args.keys)
        directory = args.out / f"{protocol}-{workload}-{seed + i}" if args.out else None
        summaries.append(run_chaos(spec, directory, _progress))
        _progress(f"{protocol} / {workload}: {row(summaries[-1])['verdict']} ({summaries[-1].directory})")
    _print(summaries, args.json)
    return 0 if all(s.valid or s.expected_anomalies for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
