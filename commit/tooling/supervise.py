"""The nodes of a config as processes on this machine: ``node.py up`` (foreground or detached) and ``down``.

A foreground ``up`` owns its node processes and stops them itself; a detached
one leaves them running, and ``down`` finds them again by their pid files
(``ClusterConfig.node_pid_file``). Either way a node gets SIGTERM first, and
SIGKILL only if it has not stopped ``timeouts.stop_grace_s`` later.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from commit.config import ClusterConfig
from commit.tooling.localcluster import spawn_node

Processes = dict[str, subprocess.Popen[bytes]]
Say = Callable[[str], None]

POLL_S = 0.1


def running_pid(config: ClusterConfig, node_id: str) -> int | None:
    """The pid in the node's pid file, if that process is alive."""
    try:
        pid = int(config.node_pid_file(node_id).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def running_nodes(config: ClusterConfig) -> dict[str, int]:
    return {n.id: pid for n in config.nodes if (pid := running_pid(config, n.id)) is not None}


def start_nodes(config: ClusterConfig, *, detach: bool) -> Processes:
    return {n.id: spawn_node(config, n.id, detach=detach) for n in config.nodes}


def stop_processes(config: ClusterConfig, procs: Processes, say: Say) -> None:
    """SIGTERM every node still running, then SIGKILL the ones still there after the grace period."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    grace_s = config.timeouts.stop_grace_s
    deadline = time.monotonic() + grace_s
    for node_id, proc in procs.items():
        try:
            proc.wait(timeout=max(POLL_S, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{node_id} did not stop in {grace_s}s; killing it")
            proc.kill()
            proc.wait()


def watch(procs: Processes, say: Say) -> None:
    """Report nodes that exit on their own; return once every node has exited."""
    reported: set[str] = set()
    while len(reported) < len(procs):
        for node_id, proc in procs.items():
            if node_id not in reported and proc.poll() is not None:
                say(f"{node_id} exited with code {proc.returncode}")
                reported.add(node_id)
        time.sleep(POLL_S)


def stop_detached(config: ClusterConfig, say: Say, *, clean: bool) -> dict[str, int]:
    """Stop the nodes found by their pid files (and remove the data directory with ``clean``)."""
    pids = running_nodes(config)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    grace_s = config.timeouts.stop_grace_s
    deadline = time.monotonic() + grace_s
    for node_id, pid in pids.items():
        while running_pid(config, node_id) == pid and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if running_pid(config, node_id) == pid:
            say(f"{node_id} (pid {pid}) did not stop in {grace_s}s; killing it")
            os.kill(pid, signal.SIGKILL)
        say(f"stopped {node_id} (pid {pid})")
    if clean and config.data_dir.exists():
        shutil.rmtree(config.data_dir)
        say(f"removed {config.data_dir}")
    return pids


ENDPOINT_COLUMNS = ("node", "rpc", "raft_ports", "pid", "leads", "log")


def endpoint_rows(config: ClusterConfig, rows: list[dict[str, Any]], procs: Processes) -> list[dict[str, Any]]:
    """One row per node started: where it listens, what it leads (from status ``rows``), its log."""
    leads: dict[str, list[str]] = {}
    for row in rows:
        if row.get("role") == "leader":
            leads.setdefault(row["node"], []).append(row["group"])
    return [
        {
            "node": n.id,
            "rpc": f"{n.host}:{n.rpc_port}",
            "raft_ports": f"{n.raft_port}-{n.raft_port + len(config.groups()) - 1}",
            "pid": procs[n.id].pid,
            "leads": ",".join(leads.get(n.id, [])) or None,
            "log": str(config.node_log(n.id)),
        }
        for n in config.nodes
    ]
