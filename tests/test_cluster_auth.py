"""With a cluster secret set, only clients that prove it are served."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import trio

import commit
from tests.conftest import _started
from commit.tooling.localcluster import LocalCluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def secret_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _started(tmp_path_factory.mktemp("secret"), options={"secret": "s3cret-of-the-cluster"})


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
async def test_client_without_the_secret_is_refused(secret_cluster: LocalCluster, secret: str | None) -> None:
    config = dataclasses.replace(secret_cluster.config, secret=secret)
    async with commit.connect(config) as db:
        with pytest.raises(commit.Unauthorized):
            await db.put("k", 1)


async def test_client_with_the_secret_is_served(secret_cluster: LocalCluster) -> None:
    async with commit.connect(secret_cluster.config) as db:
        version = await db.put("k", "v")
        assert await db.get("k") == ("v", version, True)


def test_groups_elect_leaders_over_signed_raft_links(secret_cluster: LocalCluster) -> None:
    """PySyncObj got the peer secret as its password (frames signed by consensus.raft_mac); every group elects."""
    rows = trio.run(secret_cluster.status)
    leaders = {r["group"] for r in rows if r.get("role") == "leader"}
    assert leaders == {g.name for g in secret_cluster.config.groups()}
