"""node.py as an operator uses it: up in the foreground, Ctrl-C, up --detach, down --clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commit.tooling.localcluster import ROOT, LocalCluster

pytestmark = pytest.mark.cluster
NODE_PY = str(ROOT / "node.py")


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed within {timeout_s}s; got {lines}")


def _pids(cluster: LocalCluster) -> list[Path]:
    return [cluster.config.node_dir(n) / "node.pid" for n in cluster.node_ids]


def test_up_in_foreground_stops_every_node_on_ctrl_c(tmp_path: Path) -> None:
    """Like a terminal's Ctrl-C: SIGINT to the whole process group, `up` and every node at once."""
    cluster = LocalCluster(tmp_path)  # only for its config; node.py starts the nodes
    proc = subprocess.Popen(
        [sys.executable, NODE_PY, "--config", str(cluster.config_path), "up"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        lines = _wait_for_line(proc, "cluster ready", 60)
        printed = "".join(lines)
        for node in cluster.config.nodes:
            assert f"{node.host}:{node.rpc_port}" in printed
        assert all(p.exists() for p in _pids(cluster))
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert "all nodes stopped" in rest
        assert proc.returncode == 0
        assert not any(p.exists() for p in _pids(cluster)), "a node did not shut down cleanly"
        for node_id in cluster.node_ids:
            log = (cluster.config.node_dir(node_id) / "node.log").read_text()
            assert log.rstrip().endswith("node: stopped"), f"{node_id} log ends: {log[-300:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_up_detach_status_down_clean(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    base = [sys.executable, NODE_PY, "--config", str(cluster.config_path)]
    try:
        subprocess.run(base + ["up", "--detach"], check=True, timeout=60, capture_output=True)
        again = subprocess.run(base + ["up", "--detach"], timeout=60, capture_output=True, text=True)
        assert again.returncode == 1 and "already running" in again.stderr
        status = json.loads(subprocess.run(base + ["status", "--json"], check=True, timeout=60,
                                           capture_output=True, text=True).stdout)
        assert status["leaderless"] == []
    finally:
        down = subprocess.run(base + ["down", "--clean"], timeout=60, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped n") == 3
    assert not cluster.config.data_dir.exists()
    after = subprocess.run(base + ["status"], timeout=60, capture_output=True, text=True)
    assert after.returncode == 1 and "no" in after.stdout


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[nodes]]\nid = "n1"\nrpc_port = 7000\nraft_port = 7010\n[raft]\nleader_fallback_timeout_s = "soon"\n')
    out = subprocess.run([sys.executable, NODE_PY, "--config", str(path), "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "raft.leader_fallback_timeout_s" in out.stderr and "'soon'" in out.stderr
