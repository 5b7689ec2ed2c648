"""Real partitions on loopback: iptables rules between the nodes' own addresses, Raft traffic included.

Each node of a chaos cluster has its own address in 127.0.0.0/8 (``NODE_HOSTS``): it listens there and
dials from there (``consensus.raft_transport.LimitedConnection`` binds PySyncObj's sockets,
``consensus.rpc.connect_rpc`` the RPC ones). A cut between two nodes is then a pair of rules in a chain this
run made (``-s A -d B -j DROP`` and the reverse), jumped to from OUTPUT, which every loopback packet
crosses: both directions of every connection between them stop, whoever dialled, while clients (on
127.0.0.1) still reach both. Packets are dropped, not refused, as a real network split loses them: the
peers find out by their own timeouts, as Jepsen's partitions make them (``jepsen.net``, ``iptables``).

Nothing here touches an address outside 127.0.0.0/8 or a chain it did not make; ``open_firewall``
removes its chain on the way out, whatever happened.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
NODE_HOSTS = tuple(f"127.0.0.{11 + i}" for i in range(9))  # node i of a chaos cluster: never 127.0.0.1
IPTABLES_TIMEOUT_S = 10.0


class FirewallUnavailable(RuntimeError):
    """iptables is missing or refuses this process (not root, no CAP_NET_ADMIN): partitions cannot run."""


def firewall_missing() -> str | None:
    """Why partitions cannot run here, or None: the reason a test or a run prints when it skips them."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    try:
        _iptables("-S", "OUTPUT")
    except FirewallUnavailable as exc:
        return str(exc)
    return None


def _iptables(*args: str) -> str:
    try:
        done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallUnavailable(f"iptables {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        raise FirewallUnavailable(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _loopback(host: str) -> str:
    if ipaddress.ip_address(host) not in LOOPBACK:
        raise ValueError(f"{host} is not in 127.0.0.0/8: a chaos run never touches another address")
    return host


class Firewall:
    """The cuts now in force between node addresses, as rules in this run's own chain."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.cut_pairs: set[frozenset[str]] = set()

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop every packet between each pair of addresses, both ways (pairs already cut stay cut)."""
        for a, b in pairs:
            pair = frozenset((_loopback(a), _loopback(b)))
            if pair in self.cut_pairs or a == b:
                continue
            for src, dst in ((a, b), (b, a)):
                _iptables("-A", self.chain, "-s", src, "-d", dst, "-j", "DROP")
            self.cut_pairs.add(pair)

    def heal(self) -> None:
        """Every cut undone: packets flow again, and TCP's retransmissions carry what was waiting."""
        _iptables("-F", self.chain)
        self.cut_pairs.clear()


@contextmanager
def open_firewall(chain: str) -> Iterator[Firewall]:
    """A chain of this run's own, jumped to from OUTPUT, deleted at the end (healing every cut first)."""
    if len(chain) > 28 or not chain.replace("-", "").isalnum():
        raise ValueError(f"iptables chain name {chain!r}: letters, digits and '-', at most 28 characters")
    _forget_leftover(chain)
    _iptables("-N", chain)
    try:
        _iptables("-I", "OUTPUT", "-j", chain)
        try:
            yield Firewall(chain)
        finally:
            _iptables("-D", "OUTPUT", "-j", chain)
    finally:
        _iptables("-F", chain)
        _iptables("-X", chain)


def _forget_leftover(chain: str) -> None:
    """Remove a chain of this name that a run killed before its cleanup left behind (with its jumps)."""
    try:
        _iptables("-S", chain)
    except FirewallUnavailable:
        return  # no such chain: the usual case
    while True:
        try:
            _iptables("-D", "OUTPUT", "-j", chain)
        except FirewallUnavailable:
            break
    _iptables("-F", chain)
    _iptables("-X", chain)
