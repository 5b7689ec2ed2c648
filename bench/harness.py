"""Load from client processes, closed or open loop, with latencies in HDR histograms.

A phase runs ``clients`` concurrent client tasks, spread over ``procs`` OS
processes (each with its own connections). Each task calls a workload
(``bench.workloads``, looked up by name so it can cross the process
boundary); a call that returns normally is one operation whose latency is
recorded, one that raises ``commit.Conflict`` is counted as an abort, any
other ``commit.ClusterError`` as an error. Every process runs its workload's
setup, then waits for the others at a barrier, so they start together and
their per-second rows line up.

Closed loop (``rate=None``): each task starts its next operation as soon as
its last one ended, so the offered load is whatever the cluster lets through.

Open loop (``rate`` operations/s in all, split over the processes like the
tasks): operations are due at fixed intended start times, and whichever task
is free takes the next one. Latency is measured from the INTENDED start, not
from when a task got to it: when the cluster stalls, the operations that
should have started meanwhile are charged the stall, as the users who sent
them would see it. Measuring from the actual start instead is coordinated
omission (Gil Tene, "How NOT to measure latency"; the correction of wrk2's
constant-throughput mode, and what HdrHistogram's
``recordValueWithExpectedInterval`` approximates after the fact). ``late``
counts the operations of the measured period that no task was free to start
at their intended time, including those still unstarted at the end.

The first ``warmup_s`` seconds run operations that are not recorded; the
``seconds`` after them are measured: an operation is measured if it started
(or, open loop, was due) in them. A measured operation goes in the
per-second row of the second it ended in, as CockroachDB's ``workload``
ticks do, so a row's ops/s is the throughput seen in that second; one that
ends in a trailing fraction of a second, or after the period, is only in the
totals. Histograms are merged across processes, so percentiles are of every
operation.
"""

from __future__ import annotations

import math
import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

import commit
from bench import workloads
from commit.config import ClusterConfig, load_config

US_MAX = 60_000_000  # 1 us .. 60 s
US_PER_S = 1_000_000
US_PER_MS = 1000
SIGNIFICANT_DIGITS = 3  # the totals: 0.1% resolution
# A run keeps one histogram per second per process; 1% resolution keeps each one small (a tenth the counters).
SECOND_SIGNIFICANT_DIGITS = 2
SETUP_TIMEOUT_S = 300.0  # loading a workload's rows (bounded by workloads.MAX_LOADED_ROWS) and connecting
DRAIN_S = 120.0  # what operations in flight at the end may still take (client deadlines, db.run retries)

OK, ABORT, ERROR = "ok", "abort", "error"


def histogram(digits: int = SIGNIFICANT_DIGITS) -> HdrHistogram:
    return HdrHistogram(1, US_MAX, digits)


@dataclass
class OpenLoop:
    """An open loop's schedule: slot k is due at ``origin + k / rate`` (wrk2's constant throughput).

    Pure arithmetic on the times it is given, so it can be tested without a clock. A task that is free at
    ``now`` calls ``take(now)`` for the next slot; a slot taken after its intended start is late (every task
    was busy then). Slots due before ``measure_from`` are the warm-up's and not counted; none are due from
    ``until`` on.
    """

    rate: float
    origin: float
    measure_from: float
    until: float
    next_slot: int = 0
    taken_late: int = 0
    taken_measured: int = 0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"an open loop needs a positive rate, got {self.rate}")

    def intended(self, slot: int) -> float:
        return self.origin + slot / self.rate

    def due_before(self, t: float) -> int:
        """How many slots are due strictly before ``t``."""
        if t <= self.origin:
            return 0
        count = math.ceil((t - self.origin) * self.rate)
        # The float product can land one off an exact boundary: settle it on intended() itself.
        while count > 0 and self.intended(count - 1) >= t:
            count -= 1
        while self.intended(count) < t:
            count += 1
        return count

    def take(self, now: float) -> int | None:
        """The next slot for a task free at ``now``, or None once the schedule is over."""
        if now >= self.until:
            return None
        slot = self.next_slot
        due = self.intended(slot)
        if due >= self.until:
            return None
        self.next_slot += 1
        if due >= self.measure_from:
            self.taken_measured += 1
            if now > due:
                self.taken_late += 1
        return slot

    def scheduled(self) -> int:
        """The slots due in the measured period."""
        return self.due_before(self.until) - self.due_before(self.measure_from)

    def late(self) -> int:
        """Measured slots that did not start on time: taken late, or (once the run is over) never taken."""
        return self.taken_late + self.scheduled() - self.taken_measured


@dataclass(frozen=True)
class Plan:
    """What one client process runs: its share of the tasks and of the rate, and the phase's timing."""

    tasks: int
    seconds: float
    warmup_s: float
    rate: float | None  # this process's operations/s; None: closed loop
    offset_s: float  # where this process's slots fall between the others' (open loop)


@dataclass
class Recorder:
    """One process's measured operations: totals, and a histogram and counts per whole second they ended in."""

    measure_from: float
    whole_seconds: int
    hist: HdrHistogram = field(default_factory=histogram)
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, ABORT: 0, ERROR: 0})
    second_hists: dict[int, HdrHistogram] = field(default_factory=dict)
    second_counts: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.second_counts = {outcome: [0] * self.whole_seconds for outcome in self.counts}

    def record(self, start: float, end: float, outcome: str) -> None:
        """An operation that started (or was due) at ``start`` and ended at ``end``; the warm-up's are dropped."""
        if start < self.measure_from:
            return
        self.counts[outcome] += 1
        second = int(end - self.measure_from)
        in_row = second < self.whole_seconds
        if in_row:
            self.second_counts[outcome][second] += 1
        if outcome != OK:
            return
        us = min(US_MAX, max(1, int((end - start) * US_PER_S)))
        self.hist.record_value(us)
        if in_row:
            if second not in self.second_hists:
                self.second_hists[second] = histogram(SECOND_SIGNIFICANT_DIGITS)
            self.second_hists[second].record_value(us)

    def result(self) -> dict[str, Any]:
        return {
            "hist": self.hist.encode(),
            "second_hists": {s: h.encode() for s, h in self.second_hists.items()},
            "second_counts": self.second_counts,
            "ops": self.counts[OK], "aborts": self.counts[ABORT], "errors": self.counts[ERROR],
        }


async def _attempt(body: workloads.Op, db: commit.Database, state: Any, params: dict[str, Any], client: str,
                   i: int) -> str:
    try:
        await body(db, state, params, client, i)
    except commit.Conflict:
        return ABORT
    except commit.ClusterError:
        return ERROR
    return OK


async def _run_clients(config: ClusterConfig, workload: str, params: dict[str, Any], plan: Plan, tag: str,
                       barrier: Any) -> dict[str, Any]:
    body = workloads.REGISTRY[workload]
    async with commit.connect(config) as db:
        state = await workloads.SETUP[workload](db, params, tag) if workload in workloads.SETUP else None
        counters = state if isinstance(state, workloads.Counters) else None
        await trio.to_thread.run_sync(barrier.wait, SETUP_TIMEOUT_S)
        start = trio.current_time()
        measure_from = start + plan.warmup_s
        until = measure_from + plan.seconds
        recorder = Recorder(measure_from, math.floor(plan.seconds))
        schedule = None if plan.rate is None else OpenLoop(plan.rate, start + plan.offset_s, measure_from, until)

        async def closed(w: int) -> None:
            client = f"{tag}-{w}"
            i = 0
            while (t0 := trio.current_time()) < until:
                outcome = await _attempt(body, db, state, params, client, i)
                recorder.record(t0, trio.current_time(), outcome)
                i += 1

        async def open_(schedule: OpenLoop) -> None:
            # An open loop's operation is its slot, whichever task runs it: (tag-open, slot) replays it.
            while (slot := schedule.take(trio.current_time())) is not None:
                due = schedule.intended(slot)
                await trio.sleep_until(due)
                outcome = await _attempt(body, db, state, params, f"{tag}-open", slot)
                recorder.record(due, trio.current_time(), outcome)

        async def forget_warmup_retries(counters: workloads.Counters) -> None:
            await trio.sleep_until(measure_from)
            counters.retries = 0

        async with trio.open_nursery() as nursery:
            if counters is not None:
                nursery.start_soon(forget_warmup_retries, counters)
            for w in range(plan.tasks):
                if schedule is None:
                    nursery.start_soon(closed, w)
                else:
                    nursery.start_soon(open_, schedule)
        finished = trio.current_time()
    return {
        **recorder.result(),
        "elapsed": finished - measure_from,
        "retries": 0 if counters is None else counters.retries,
        "late": 0 if schedule is None else schedule.late(),
        "scheduled": 0 if schedule is None else schedule.scheduled(),
    }


def _client_process(config_path: str, workload: str, params: dict[str, Any], plan: Plan, tag: str,
                    barrier: Any, out: Any) -> None:
    try:
        out.put(trio.run(_run_clients, load_config(config_path), workload, params, plan, tag, barrier))
    except BaseException:
        barrier.abort()  # the other processes stop waiting for this one at the start
        out.put({"error": traceback.format_exc()})


def _ms(hist: HdrHistogram, percentile: float) -> float:
    return hist.get_value_at_percentile(percentile) / US_PER_MS


def _latencies(hist: HdrHistogram) -> dict[str, float]:
    return {"p50_ms": _ms(hist, 50), "p95_ms": _ms(hist, 95), "p99_ms": _ms(hist, 99),
            "max_ms": hist.get_max_value() / US_PER_MS}


def merge_seconds(results: list[dict[str, Any]], whole_seconds: int) -> list[dict[str, Any]]:
    """One row per whole second of the measured period, each the sum (and merged histogram) of the processes'."""
    rows = []
    for second in range(whole_seconds):
        hist = histogram(SECOND_SIGNIFICANT_DIGITS)
        for r in results:
            if second in r["second_hists"]:
                hist.decode_and_add(r["second_hists"][second])
        counts = {name: sum(r["second_counts"][outcome][second] for r in results)
                  for name, outcome in (("ops", OK), ("errors", ERROR), ("aborts", ABORT))}
        rows.append({"elapsed": second + 1, **counts, **_latencies(hist)})
    return rows


def run_phase(config: ClusterConfig, workload: str, params: dict[str, Any], clients: int, procs: int,
              seconds: float, *, warmup_s: float = 0.0, rate: float | None = None) -> dict[str, Any]:
    """Run ``workload`` with ``clients`` tasks over ``procs`` processes: closed loop, or open at ``rate`` ops/s.

    Returns clients, client_procs, ops (= committed), aborts, errors, abort_rate, ops_per_s, p50/p95/p99/max_ms,
    mean_ms, retries, late, scheduled, rate, warmup_s, elapsed_s, hist (the merged HdrHistogram, encoded:
    ``HdrHistogram.decode``) and seconds (one row per whole measured second).
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    procs = max(1, min(procs, clients))
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(procs)
    plans = [
        Plan(n, seconds, warmup_s, None if rate is None else rate * n / clients,
             # Process i's slots fall i/procs of its interval after process 0's: evenly spaced in all.
             0.0 if rate is None else i / procs * clients / (rate * n))
        for i, n in enumerate(share)
    ]
    workers = [
        ctx.Process(target=_client_process,
                    args=(str(config.path), workload, params, plan, f"{workload}{clients}p{i}", barrier, queue))
        for i, plan in enumerate(plans)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=SETUP_TIMEOUT_S + warmup_s + seconds + DRAIN_S) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    # The processes that only saw the barrier broken by a failed one come last.
    failed = sorted((r["error"] for r in results if "error" in r), key=lambda e: "BrokenBarrierError" in e)
    if failed:
        raise RuntimeError(f"{len(failed)} client process(es) of {workload} failed; the first:\n{failed[0]}")
    return summarize(clients, procs, seconds, warmup_s, results, rate)


def summarize(clients: int, procs: int, seconds: float, warmup_s: float, results: list[dict[str, Any]],
              rate: float | None = None) -> dict[str, Any]:
    """A phase's figures from every client process's result (this harness's, or a peer's like it)."""
    merged = histogram()
    for r in results:
        merged.decode_and_add(r["hist"])
    ops = sum(r["ops"] for r in results)
    aborts = sum(r["aborts"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "clients": clients,
        "client_procs": procs,
        "ops": ops,
        "committed": ops,
        "aborts": aborts,
        "errors": sum(r["errors"] for r in results),
        "abort_rate": aborts / (ops + aborts) if ops + aborts else 0.0,
        "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
        **_latencies(merged),
        "mean_ms": merged.get_mean_value() / US_PER_MS,
        **{k: sum(r.get(k, 0) for r in results) for k in ("retries", "late", "scheduled")},
        "rate": rate,
        "warmup_s": warmup_s,
        "elapsed_s": elapsed,
        "hist": merged.encode().decode("ascii"),
        "seconds": merge_seconds(results, math.floor(seconds)),
    }
