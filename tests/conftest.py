"""Shared fixtures. Randomised tests print their seed; set TEST_SEED to replay one."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commit.tooling.localcluster import LocalCluster  # noqa: E402


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("TEST_SEED", random.randrange(1, 2**31)))
    print(f"TEST_SEED={value}")
    return value


def _started(root: Path, **kwargs: object) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, **kwargs)  # type: ignore[arg-type]
    cluster.start_all()
    try:
        trio.run(cluster.wait_ready)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node cluster for the tests of a module that do not crash nodes."""
    yield from _started(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster of its own, for tests that kill or pause nodes."""
    yield from _started(tmp_path, options={"raft": {"log_compaction_min_entries": 200}})


@pytest.fixture
def impatient_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster of its own whose clients and status calls give up on a silent (paused) node soon."""
    yield from _started(tmp_path, options={"timeouts": {"client_attempt_s": 1.5, "request_s": 2.0}})


@pytest.fixture
def hook_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-node cluster of its own with the test-only fault hooks, whose in-doubt participants ask soon."""
    yield from _started(tmp_path, options={"transactions": {"fault_hooks": True, "in_doubt_timeout_s": 0.5}})


@pytest.fixture(params=["os", "fsync"])
def durable_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own in each durability mode, compacting its logs early."""
    options = {"durability": request.param, "raft": {"log_compaction_min_entries": 200}}
    yield from _started(tmp_path, options=options)
