"""A phase's per-second rows and totals as text, in the layout of CockroachDB's ``workload run``.

CockroachDB prints one line a second (pkg/workload/cli/format.go, ``textFormatter``), repeating the header
every 20 lines, and a totals block at the end; the columns are read the same way here, so a reader who
knows one knows the other:

* ``errors``: the failed operations so far (cumulative, as CockroachDB's ``numErr``): errors and aborts,
  since either is an operation that did not commit;
* ``ops/sec(inst)``: the operations of that second; ``ops/sec(cum)``: the operations so far over the
  seconds so far;
* ``p50(ms)`` .. ``pMax(ms)``: the latencies of that second's operations.

Pure: rows in (``bench.harness.run_phase``'s ``seconds``, or its whole result), strings out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADER = "_elapsed___errors__ops/sec(inst)___ops/sec(cum)__p50(ms)__p95(ms)__p99(ms)_pMax(ms)"
TOTALS_HEADER = "_elapsed___errors_____ops(total)___ops/sec(cum)__avg(ms)__p50(ms)__p95(ms)__p99(ms)_pMax(ms)"
HEADER_EVERY = 20  # lines between repeated headers, as CockroachDB's textFormatter
ROW = "{elapsed:7.1f}s {errors:8d} {inst:14.1f} {cum:14.1f} {p50:8.1f} {p95:8.1f} {p99:8.1f} {pmax:8.1f}"
TOTALS = "{elapsed:7.1f}s {errors:8d} {ops:14d} {cum:14.1f} {avg:8.1f} {p50:8.1f} {p95:8.1f} {p99:8.1f} {pmax:8.1f}"


def per_second_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The header, then one line per row (each a one-second row: ``elapsed`` is its end, in seconds)."""
    lines: list[str] = []
    ops = errors = 0
    for n, row in enumerate(rows):
        if n % HEADER_EVERY == 0:
            lines.append(HEADER)
        ops += row["ops"]
        errors += row["errors"] + row["aborts"]
        lines.append(ROW.format(elapsed=row["elapsed"], errors=errors, inst=float(row["ops"]),
                                cum=ops / row["elapsed"], p50=row["p50_ms"], p95=row["p95_ms"],
                                p99=row["p99_ms"], pmax=row["max_ms"]))
    if not lines:
        lines.append(HEADER)
    return lines


def totals_line(result: dict[str, Any]) -> str:
    """The totals of a whole phase (``run_phase``'s result), under ``TOTALS_HEADER``."""
    return TOTALS.format(elapsed=result["elapsed_s"], errors=result["errors"] + result["aborts"], ops=result["ops"],
                         cum=result["ops_per_s"], avg=result["mean_ms"], p50=result["p50_ms"],
                         p95=result["p95_ms"], p99=result["p99_ms"], pmax=result["max_ms"])
