"""The benchmark's load generation: key distributions, the open-loop schedule, per-second rows, and a smoke run.

All but the last test are pure and fast; the last runs each new workload for a second on the shared cluster.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from bench.harness import ABORT, OK, OpenLoop, Recorder, merge_seconds, run_phase
from bench.keys import (ZETAN, ZIPFIAN_CONSTANT, KeyGenerator, ScrambledZipfianGenerator, UniformGenerator,
                        ZipfianGenerator, fnv1a_64, fnvhash64, generator, zeta)
from bench.seconds import HEADER, HEADER_EVERY, TOTALS_HEADER, per_second_lines, totals_line
from bench.workloads import BankParams, KShardParams, NewOrderParams, YcsbParams, on_shard, parse
from commit.routing import shard_of
from commit.tooling.localcluster import LocalCluster

SAMPLES = 100_000
N = 1000


def frequencies(gen: KeyGenerator, samples: int = SAMPLES) -> Counter[int]:
    return Counter(gen.next() for _ in range(samples))


def test_zipfian_frequencies_follow_theta(seed: int) -> None:
    counts = frequencies(ZipfianGenerator(N, seed))
    assert min(counts) >= 0 and max(counts) < N
    p0 = counts[0] / SAMPLES
    assert p0 == pytest.approx(1 / zeta(N, ZIPFIAN_CONSTANT), rel=0.05)
    # Rank r has weight 1 / r**theta: item 1 is 2**-0.99 of item 0, item 9 is 10**-0.99.
    assert counts[1] / counts[0] == pytest.approx(2 ** -ZIPFIAN_CONSTANT, rel=0.1)
    assert counts[9] / counts[0] == pytest.approx(10 ** -ZIPFIAN_CONSTANT, rel=0.2)
    median = sorted(counts[i] for i in range(N))[N // 2]
    assert counts[0] > 100 * median


def test_scrambled_zipfian_keeps_the_skew_and_spreads_the_hot_keys(seed: int) -> None:
    counts = frequencies(ScrambledZipfianGenerator(N, seed))
    assert min(counts) >= 0 and max(counts) < N
    assert len(counts) > 0.95 * N  # the tail of the 10-billion-item zipfian reaches nearly every key
    ranked = [key for key, _ in counts.most_common()]
    # The hottest keys are the FNV hashes of the zipfian's hottest items, anywhere in the key space.
    hot = {fnvhash64(item) % N for item in range(3)}
    assert set(ranked[:3]) == hot and hot != {0, 1, 2}
    assert counts[ranked[0]] / SAMPLES == pytest.approx(1 / ZETAN, rel=0.1)
    median = sorted(counts[i] for i in range(N))[N // 2]
    assert counts[ranked[0]] > 20 * median


def test_generators_are_seeded() -> None:
    for make in (ZipfianGenerator, ScrambledZipfianGenerator, UniformGenerator):
        a, b = make(N, "client-7"), make(N, "client-7")
        assert [a.next() for _ in range(50)] == [b.next() for _ in range(50)]


def test_fnv1a_64_test_vectors() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8
    assert all(fnvhash64(v) >= 0 for v in (0, 1, -1, 2**63 - 1, 12345678901))


def test_uniform_covers_the_range(seed: int) -> None:
    n, samples = 100, 50_000
    counts = frequencies(UniformGenerator(n, seed), samples)
    assert set(counts) == set(range(n))
    assert all(abs(c - samples / n) < 0.3 * samples / n for c in counts.values())
    assert isinstance(generator("uniform", n), UniformGenerator)
    with pytest.raises(ValueError):
        generator("latest", n)


def simulate(schedule: OpenLoop, tasks: int, service_s: float) -> None:
    """Tasks that each take ``service_s`` per operation, taking slots the way the harness's do."""
    free = [schedule.origin] * tasks
    while True:
        now = min(free)
        slot = schedule.take(now)
        if slot is None:
            return
        free[free.index(now)] = max(now, schedule.intended(slot)) + service_s


def test_open_loop_intended_times() -> None:
    schedule = OpenLoop(rate=10, origin=100.0, measure_from=101.0, until=103.0)
    assert [schedule.intended(k) for k in range(3)] == pytest.approx([100.0, 100.1, 100.2])
    assert schedule.due_before(100.0) == 0
    assert schedule.due_before(101.0) == 10  # slot 10 is due at 101.0: not before it
    assert schedule.due_before(101.05) == 11
    assert schedule.scheduled() == 20
    with pytest.raises(ValueError):
        OpenLoop(rate=0, origin=0.0, measure_from=0.0, until=1.0)


def test_open_loop_fast_enough_is_never_late() -> None:
    schedule = OpenLoop(rate=10, origin=100.0, measure_from=101.0, until=103.0)
    simulate(schedule, tasks=1, service_s=0.05)
    assert schedule.next_slot == 30 and schedule.late() == 0


def test_open_loop_counts_late_and_unstarted_slots() -> None:
    # One task at 0.15 s an operation for slots every 0.1 s: slot k starts at 100 + 0.15k, so slots
    # 10..19 of the measured 10..29 start late and 20..29 never start before the end.
    schedule = OpenLoop(rate=10, origin=100.0, measure_from=101.0, until=103.0)
    simulate(schedule, tasks=1, service_s=0.15)
    assert schedule.next_slot == 20
    assert schedule.taken_late == 10 and schedule.late() == 20
    # Two such tasks keep up (13.3 operations/s of capacity): none is late.
    schedule = OpenLoop(rate=10, origin=100.0, measure_from=101.0, until=103.0)
    simulate(schedule, tasks=2, service_s=0.15)
    assert schedule.late() == 0


def test_recorder_rows_drop_the_warmup_and_merge() -> None:
    recorder = Recorder(measure_from=10.0, whole_seconds=2)
    recorder.record(9.5, 10.5, OK)  # started in the warm-up: not measured
    recorder.record(10.2, 10.205, OK)
    recorder.record(10.99, 11.01, OK)  # the row of the second it ended in
    recorder.record(11.7, 11.8, ABORT)
    recorder.record(11.9, 12.01, OK)  # ended in the trailing fraction of a second: totals only
    result = recorder.result()
    assert (result["ops"], result["aborts"], result["errors"]) == (3, 1, 0)
    first, second = merge_seconds([result, result], 2)
    assert (first["elapsed"], first["ops"], first["aborts"]) == (1, 2, 0)
    assert (second["elapsed"], second["ops"], second["aborts"]) == (2, 2, 2)
    assert first["p50_ms"] == pytest.approx(5.0, rel=0.02)
    assert second["max_ms"] == pytest.approx(20.0, rel=0.02)
    assert HdrHistogram.decode(result["hist"]).get_max_value() / 1000 == pytest.approx(110.0, rel=0.01)


def row(elapsed: int, ops: int, errors: int = 0, aborts: int = 0) -> dict[str, float]:
    return {"elapsed": elapsed, "ops": ops, "errors": errors, "aborts": aborts, "p50_ms": 1.3, "p95_ms": 2.5,
            "p99_ms": 3.0, "max_ms": 10.0}


def test_per_second_lines_like_cockroach_workload() -> None:
    lines = per_second_lines([row(1, 100, errors=1, aborts=2), row(2, 50)])
    assert lines == [
        "_elapsed___errors__ops/sec(inst)___ops/sec(cum)__p50(ms)__p95(ms)__p99(ms)_pMax(ms)",
        "    1.0s        3          100.0          100.0      1.3      2.5      3.0     10.0",
        "    2.0s        3           50.0           75.0      1.3      2.5      3.0     10.0",
    ]
    many = per_second_lines([row(n, 1) for n in range(1, HEADER_EVERY + 2)])
    assert [i for i, line in enumerate(many) if line == HEADER] == [0, HEADER_EVERY + 1]
    assert per_second_lines([]) == [HEADER]
    result = {"elapsed_s": 2.04, "errors": 1, "aborts": 2, "ops": 150, "ops_per_s": 73.5, "mean_ms": 1.75,
              "p50_ms": 1.3, "p95_ms": 2.5, "p99_ms": 3.0, "max_ms": 10.0}
    assert TOTALS_HEADER.startswith("_elapsed___errors_____ops(total)")
    assert totals_line(result) == ("    2.0s        3            150           73.5      1.8      1.3      2.5      3.0"
                                   "     10.0")


def test_workload_parameters_are_checked() -> None:
    assert parse(BankParams, {"cross_shard": 0.2}).cross_shard == 0.2
    for kind, bad in ((BankParams, {"cross_shard": 1.5}), (BankParams, {"accounts": 3}),
                      (KShardParams, {"k": 6}), (YcsbParams, {"mix": "C"}), (YcsbParams, {"distribution": "hot"}),
                      (NewOrderParams, {"items": 3}), (NewOrderParams, {"protocol": "4pc"})):
        with pytest.raises(ValueError):
            parse(kind, bad)
    rng = random.Random(1)
    for _ in range(20):
        shard = rng.randrange(5)
        assert shard_of(on_shard(f"w{rng.random()}", shard, 5).encode(), 5) == shard


SMOKE: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("bank", {"cross_shard": 0.5, "accounts_per_shard": 5, "retry": True}, {}),
    ("ycsb", {"mix": "F", "records": 100}, {"warmup_s": 0.2}),
    ("kshard", {"k": 3}, {"rate": 50.0}),
    ("neworder", {"warehouses": 3, "items": 20}, {}),
)


@pytest.mark.cluster
def test_each_workload_runs_on_a_real_cluster(shared_cluster: LocalCluster) -> None:
    for workload, params, options in SMOKE:
        result = run_phase(shared_cluster.config, workload, {**params, "prefix": f"smoke-{workload}-"}, 2, 1, 1.0,
                           **options)
        assert result["committed"] == result["ops"] > 0, workload
        assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
        [second] = result["seconds"]
        assert second["elapsed"] == 1 and 0 < second["ops"] <= result["ops"]
        assert len(per_second_lines(result["seconds"])) == 2
        assert result["retries"] >= 0 and isinstance(result["hist"], str)
        if "rate" in options:
            assert result["scheduled"] == 50 and 0 <= result["late"] <= result["scheduled"]
