"""Link faults: which node-to-node messages this node loses on purpose.

Why: to show what each commit protocol does under a partition or a lost
message (a coordinator that cannot reach a participant's leader, a PREPARE
that never arrives) without killing processes. Enabled only with
``transactions.fault_hooks = true``; driven through the ``test.fault`` RPC,
``python node.py fault ...`` and ``LocalCluster.cut/heal/partition/drop``.

What it covers: the RPC layer only. A node's outgoing calls to other nodes
(``commit.peers.Peers`` over the node's own ``commit.client.Database``) ask
``LinkFaults.lost`` before each attempt; a lost message fails that attempt as
``Unavailable`` (an unreachable node, nothing sent), so the sender's normal
retry, fallback and backoff run and its own deadlines bound the wait.

What it does not cover: Raft replication traffic between the replicas of a
group (the raft ports) is NOT affected, so leaders stay where they are and
groups keep their quorums; clients outside the nodes are not affected either.
To partition Raft too, put nodes in network namespaces and cut them with
iptables.

Each node filters only its own outgoing messages, per direction: a cut
between a and b takes telling both a (cut b) and b (cut a), as
``link_requests`` and the callers built on it do.
"""

from __future__ import annotations

import logging
from typing import Any

from consensus.errors import InvalidRequest

log = logging.getLogger(__name__)

DISABLED = "fault injection is disabled (transactions.fault_hooks = false)"
MAX_METHOD_CHARS = 64
OPS = ("cut", "heal", "drop", "undrop", "list")


class LinkFaults:
    """The links this node has cut and the RPC methods it drops, consulted before each outgoing call."""

    def __init__(self, node_id: str, enabled: bool) -> None:
        self.node_id = node_id
        self.enabled = enabled
        self.cut_peers: set[str] = set()
        self.dropped: set[str] = set()
        self.lost_count = 0

    def require_enabled(self) -> None:
        if not self.enabled:
            raise InvalidRequest(DISABLED)

    def cut(self, peer: str) -> None:
        """Lose every message this node sends to ``peer`` (the other direction is ``peer``'s to cut)."""
        self.require_enabled()
        if peer == self.node_id:
            raise InvalidRequest(f"node {self.node_id} cannot cut its link to itself")
        self.cut_peers.add(peer)
        log.warning("fault injection: link %s -> %s cut", self.node_id, peer)

    def heal(self, peer: str | None = None) -> None:
        """Restore the link to ``peer``, or every link when ``peer`` is None."""
        self.require_enabled()
        healed = set(self.cut_peers) if peer is None else {peer} & self.cut_peers
        self.cut_peers -= healed
        if healed:
            log.warning("fault injection: link %s -> %s healed", self.node_id, ", ".join(sorted(healed)))

    def drop(self, method: str) -> None:
        """Lose every outgoing call of RPC ``method`` (e.g. ``shard.prepare``), to any node."""
        self.require_enabled()
        self.dropped.add(_method(method))
        log.warning("fault injection: %s drops every %s it sends", self.node_id, method)

    def undrop(self, method: str | None = None) -> None:
        """Send ``method`` again, or every dropped method when ``method`` is None."""
        self.require_enabled()
        if method is None:
            self.dropped.clear()
        else:
            self.dropped.discard(_method(method))
        log.warning("fault injection: %s no longer drops %s", self.node_id, method or "anything")

    def lost(self, dest: str, method: str) -> str | None:
        """Why a ``method`` call from this node to ``dest`` is lost, or None if it goes out."""
        if dest in self.cut_peers:
            reason = f"link {self.node_id}-{dest} cut by fault injection"
        elif method in self.dropped:
            reason = f"{method} from {self.node_id} dropped by fault injection"
        else:
            return None
        self.lost_count += 1
        return reason

    def describe(self) -> dict[str, Any]:
        return {"node": self.node_id, "enabled": self.enabled, "cut": sorted(self.cut_peers),
                "dropped": sorted(self.dropped), "lost": self.lost_count}

    def active(self) -> bool:
        return bool(self.cut_peers or self.dropped)


def _method(method: Any) -> str:
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_CHARS:
        raise InvalidRequest(f"method must be a non-empty string of at most {MAX_METHOD_CHARS} characters")
    return method
