"""The checkout comparison bench at its tiny size: every mode ran, its numbers are sane, and the atomic
modes never showed a reader an intermediate state (the isolation the sagas give up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.checkout import MODES, SAGA_MODES

ROOT = Path(__file__).resolve().parent.parent
QUICK_CHECKOUTS = 4


def test_the_quick_bench_reports_every_mode_with_sane_numbers(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.checkout", "--quick", "--json", "--results", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "checkout.json").read_text())
    assert json.loads(run.stdout) == report
    rows = {row["mode"]: row for row in report["rows"]}
    assert set(rows) == set(MODES)
    for mode, row in rows.items():
        assert row["checkouts"] == QUICK_CHECKOUTS and row["errors"] == 0, row
        assert row["audit"] == "ok", row["problems"]
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 60_000 and row["per_s"] > 0, row
        assert row["completed"] + row["compensated"] == row["checkouts"], row
        assert 0 <= row["unflagged"] <= row["intermediate"] <= row["reads"], row
        if mode not in SAGA_MODES:
            assert row["intermediate"] == 0, f"{mode}: a reader saw a half-done atomic checkout: {row}"
    assert (tmp_path / "checkout.png").stat().st_size > 0
