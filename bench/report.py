"""What every benchmark shares: a cluster to run against, progress lines, and the report."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from commit.config import ClusterConfig, load_config
from commit.tooling.localcluster import LocalCluster
from commit.tooling.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def open_cluster(config_path: str | None, options: dict[str, Any],
                 shards: int = 3) -> Iterator[tuple[ClusterConfig, LocalCluster | None]]:
    """The running cluster at ``config_path``, or a throwaway 3-node one with ``options`` and ``shards``
    (its directory is ``cluster.root``, for whatever else the bench puts beside it)."""
    if config_path:
        yield load_config(config_path), None
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cluster = LocalCluster(Path(tmp), shards=shards, options=options)
        cluster.start_all()
        try:
            trio.run(cluster.wait_ready)
            progress(f"started a throwaway 3-node cluster with {shards} shards in {tmp}")
            yield cluster.config, cluster
        finally:
            cluster.stop()


def write_report(name: str, report: dict[str, Any], columns: Sequence[str], as_json: bool,
                 results: Path = RESULTS) -> None:
    report = {**report, "cpus": os.cpu_count()}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=2))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report["rows"], columns))
