"""The peers of the benchmark suite at a tiny size: every etcd workload and the bare PySyncObj phase run
against real processes and report sane figures. The etcd tests skip where etcd is not installed; the
bare PySyncObj one needs only the project's own dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.peers.bare_raft import run_bare_phase
from bench.peers.etcd import WORKLOADS, etcd_missing, open_etcd, run_etcd_phase

pytestmark = pytest.mark.cluster

CLIENTS = 2
PROCS = 1
ETCD_SECONDS = 0.5
BARE_SECONDS = 1.0
# bench.harness.run_phase's keys for a closed loop, so that the suite reads a peer's result as one of ours.
RESULT_KEYS = {"clients", "client_procs", "ops", "committed", "aborts", "errors", "abort_rate", "ops_per_s",
               "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "retries", "late", "scheduled", "rate",
               "warmup_s", "elapsed_s", "hist", "seconds"}


def _assert_sane(result: dict[str, Any]) -> None:
    assert set(result) == RESULT_KEYS, result
    assert (result["clients"], result["client_procs"]) == (CLIENTS, PROCS), result
    assert result["ops"] > 0 and result["ops_per_s"] > 0 and result["errors"] == 0, result
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"], result
    assert 0.0 <= result["abort_rate"] < 1.0, result


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    if (reason := etcd_missing()) is not None:
        pytest.skip(reason)
    with open_etcd(tmp_path_factory.mktemp("etcd"), storage="tmpfs") as endpoints:
        yield endpoints


@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_etcd_workload_reports_sane_figures(etcd: list[str], workload: str) -> None:
    _assert_sane(run_etcd_phase(etcd, workload, {}, CLIENTS, PROCS, ETCD_SECONDS))


def test_etcd_tasks_spread_over_every_member(etcd: list[str]) -> None:
    _assert_sane(run_etcd_phase(etcd, "put", {}, CLIENTS, PROCS, ETCD_SECONDS, to_leader=False))


def test_open_etcd_refuses_an_unknown_storage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage"):
        with open_etcd(tmp_path, storage="nvme"):
            pass


def test_the_bare_pysyncobj_phase_reports_sane_figures() -> None:
    result = run_bare_phase(CLIENTS, PROCS, BARE_SECONDS)
    _assert_sane(result)
    assert result["aborts"] == 0, result
