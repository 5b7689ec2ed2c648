"""``bench.scaling``'s verdicts on issue 15's targets, from rows made by hand (the run itself is a script)."""

from __future__ import annotations

from typing import Any

from bench.scaling import _ours, targets


def rows(**overrides: Any) -> list[dict[str, Any]]:
    made = [
        {"part": "transfer", "clients": 1, "ours_per_s": 100.0, "ratio": 0.2, "ours_p50_ms": 4.0, "etcd_p50_ms": 2.0},
        {"part": "transfer", "clients": 16, "ours_per_s": 900.0, "ratio": 1.1},
        {"part": "transfer", "clients": 64, "ours_per_s": 800.0, "ratio": 0.9},
        {"part": "put", "clients": 64, "ours_per_s": 5000.0, "ratio": 1.2},
        {"part": "bank", "clients": 16, "ours_per_s": 400.0, "abort_rate": 0.01},
        {"part": "bank", "clients": 64, "ours_per_s": 420.0, "abort_rate": 0.06},
        {"part": "bank", "clients": 256, "ours_per_s": None, "error": "a client process gave up"},
    ]
    for key, value in overrides.items():
        part, clients, field = key.split("__")
        next(r for r in made if r["part"] == part and r["clients"] == int(clients))[field] = value
    return made


def verdicts(found: list[dict[str, Any]]) -> dict[str, tuple[Any, bool | None]]:
    return {t["target"]: (t["measured"], t["met"]) for t in found}


def test_each_target_is_met_or_missed_by_its_own_figure() -> None:
    got = verdicts(targets(rows()))
    assert got["transfers/s vs etcd, 16 clients"] == (1.1, True)
    assert got["transfers/s vs etcd, 64 clients"] == (0.9, False)
    assert got["bank committed/s at 64 clients vs at 16"] == (1.05, True)
    assert got["bank committed/s at 256 clients vs at 16"] == (0.0, False)  # a failed point is a collapse
    assert got["bank abort rate, 64 clients"] == (0.06, False)
    assert got["puts/s vs etcd, 64 clients"] == (1.2, True)
    assert got["one-client transfer p50 vs etcd"] == (2.0, False)


def test_a_target_not_measured_is_neither_met_nor_missed() -> None:
    got = verdicts(targets([r for r in rows() if r["part"] != "put"]))
    assert got["puts/s vs etcd, 64 clients"] == (None, None)
    assert verdicts(targets(rows(transfer__1__ours_p50_ms=3.0)))["one-client transfer p50 vs etcd"] == (1.5, True)


def test_a_phase_row_keeps_rates_and_costs_per_operation() -> None:
    phase = {"ops_per_s": 123.456, "p50_ms": 5.0, "p99_ms": 9.0, "abort_rate": 0.01, "retries": 5, "ops": 100,
             "cpu_ms_per_txn": {"n1": 1.0, "n2": 2.5}, "system_share": 0.12, "switches_per_txn": 40.0,
             "node_threads": 3}
    row = _ours(phase)
    assert row["ours_per_s"] == 123.5 and row["retry_rate"] == 0.05 and row["cpu_ms"] == 3.5
    assert (row["system_share"], row["switches"], row["threads"]) == (0.12, 40.0, 3)
