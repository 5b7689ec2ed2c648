"""A throwaway cluster for the checkout, and its four services as child processes (for the demo and tests).

``checkout_cluster`` is a ``LocalCluster`` whose ``cluster.toml`` also has a ``[sagas]`` table with timeouts
short enough to watch a retry and a compensation within seconds.

``ServiceProcesses`` runs ``python -m examples.checkout.services NAME --config ... --port P``, each on a port
chosen here, and knows a service is up once the registry says it listens on that port: a service registers
only after its server is bound, and a restarted one is not mistaken for the registration it left behind.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from commit.client import Database
from commit.config import ClusterConfig
from commit.saga.registry import Address, lookup
from commit.tooling.localcluster import LocalCluster
from examples.checkout.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]  # the checkout: ``python -m examples...`` runs from here
HOST = "127.0.0.1"
# Quick enough for a demo or a test to watch a timeout, a retry and a compensation within seconds.
QUICK_SAGAS = {"attempt_timeout_s": 1.0, "initial_interval_s": 0.1, "maximum_interval_s": 0.5}
REGISTRY_POLL_S = 0.05


def checkout_cluster(root: Path, *, sagas: dict[str, Any] | None = None, **options: Any) -> LocalCluster:
    """A ``LocalCluster`` under ``root`` (not started) with ``[sagas]`` = ``sagas`` (default ``QUICK_SAGAS``)."""
    return LocalCluster(root, options={**options, "sagas": QUICK_SAGAS if sagas is None else sagas})


def _free_port(avoid: int | None) -> int:
    """A loopback port nobody listens on now, other than ``avoid`` (where a killed service was registered)."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port != avoid:
            return port


class ServiceProcesses:
    """The checkout services as processes of their own, each logging to ``<log_dir>/service-<name>.log``."""

    def __init__(self, config: ClusterConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"service-{name}.log"

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def start(self, name: str) -> None:
        if self.alive(name):
            raise RuntimeError(f"service {name} is already running")
        port = _free_port(self.ports.get(name))
        with self.log_path(name).open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "examples.checkout.services", name, "--config", str(self.config.path),
                 "--host", HOST, "--port", str(port)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self.ports[name] = port

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def kill(self, name: str) -> None:
        """kill -9: whatever the service was doing is cut off mid-way, its open transactions never commit."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in self.procs:
            if self.alive(name):
                self.kill(name)

    async def wait_serving(self, db: Database, names: Iterable[str] | None = None) -> None:
        """Until each service (default: every one started) is registered at the port it was given."""
        pending = set(self.procs if names is None else names)
        with trio.move_on_after(self.config.timeouts.startup_s):
            while pending:
                for name in sorted(pending):
                    if not self.alive(name):
                        tail = self.log_path(name).read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"service {name} exited:\n{tail}")
                    if await lookup(db, name) == Address(HOST, self.ports[name]):
                        pending.discard(name)
                await trio.sleep(REGISTRY_POLL_S)
            return
        raise RuntimeError(f"services {sorted(pending)} did not register within {self.config.timeouts.startup_s}s")
