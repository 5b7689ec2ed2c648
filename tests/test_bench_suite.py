"""The benchmark suite at its tiny size: every protocol and workload reported with sane numbers, the costs
equal to the registry's formulas, and the plots written as PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image

from bench.suite import PROTOCOL_WORKLOADS, TINY, YCSB_MIXES
from commit.protocols.registry import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COSTS = ("messages", "forced_writes", "message_delays", "raft_entries")


def test_the_tiny_suite_reports_every_protocol_and_workload(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench", "run", "--tiny", "--json", "--results", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert "_elapsed___errors__ops/sec(inst)" in run.stderr  # the per-second lines, as the phases ran
    rows = {(r["workload"], r["protocol"]): r for r in report["protocols"]}
    assert set(rows) == {(w, p) for w in PROTOCOL_WORKLOADS for p in PROTOCOLS}
    assert {r["workload"] for r in report["ycsb"]} == {f"ycsb-{m}" for m in YCSB_MIXES}
    for row in [*report["protocols"], *report["ycsb"], *report["shards"], *report["sweep"]]:
        assert row["committed"] > 0 and row["ops_per_s"] > 0, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], row
        assert 0 <= row["abort_rate"] <= 1 and row["retry_rate"] >= 0, row
        assert set(row["cpu_ms_per_txn"]) == {"n1", "n2", "n3"} and all(v >= 0 for v in row["cpu_ms_per_txn"].values())
    assert {(r["protocol"], r["shards"]) for r in report["shards"]} == {(p, k) for p in PROTOCOLS for k in TINY.shards}
    assert {(r["protocol"], r["clients"]) for r in report["sweep"]} == {(p, c) for p in PROTOCOLS for c in TINY.sweep}
    assert {r["protocol"] for r in report["open_loop"]} == set(PROTOCOLS)
    for row in report["open_loop"]:
        assert row["scheduled"] > 0 and 0 <= row["late"] <= row["scheduled"] and row["p50_ms"] <= row["p99_ms"], row
    probes = {(r["protocol"], r["shards"]) for r in report["costs"]}
    assert probes == {(p, n) for p in PROTOCOLS for n in TINY.cost_shards}
    for cost in report["costs"]:
        assert {k: cost[k] for k in COSTS} == {k: cost[f"formula_{k}"] for k in COSTS}, cost
    assert report["plots"]
    for name in report["plots"]:
        png = tmp_path / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
        assert matplotlib.image.imread(png).size > 0
