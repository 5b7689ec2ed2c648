"""Mutual proof of a credential on a new connection (HMAC challenge-response).

Two credentials, so that a client is not a node:

* the **client secret** proves "a client of this cluster": it may read, write
  and run transactions;
* the **peer secret** is held by nodes only. Each node proves its own key,
  ``HMAC(peer secret, node id)``, so the node id a peer claims in the
  handshake is the one it is bound to for the whole connection, and every
  protocol message it sends is checked against that id.

Both ends prove the key they share, each over the other's fresh nonce, so
neither a client nor a peer trusts a process that squats a dead node's port
without the secret. The secret never crosses the wire, and a proof cannot be
replayed on another connection or to another node: both nonces, the server's
id, the role claimed and the direction are bound into it (as in RFC 5929's
channel-bound challenges, minus TLS).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

NONCE_BYTES = 16
CLIENT = "client"


@dataclass(frozen=True)
class Credentials:
    """What one end of a connection can prove: clients hold only the client secret."""

    client_secret: str | None = None
    peer_secret: str | None = None
    node_id: str | None = None  # set for a node: it proves this id, with the peer secret

    def key_for(self, claimed: str) -> bytes | None:
        """The shared key behind a claim: ``"client"``, or a node id."""
        if claimed == CLIENT:
            return self.client_secret.encode() if self.client_secret is not None else None
        if self.peer_secret is None:
            return None
        return hmac.new(self.peer_secret.encode(), b"node:" + claimed.encode(), hashlib.sha256).digest()

    @property
    def claim(self) -> str:
        """What this end claims when it connects: its node id if it is a node, else ``"client"``."""
        return self.node_id if self.node_id is not None and self.peer_secret is not None else CLIENT

    @property
    def open(self) -> bool:
        """No client secret: a server that accepts any client (unit tests of the RPC layer only)."""
        return self.client_secret is None


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def prove(key: bytes, direction: str, claimed: str, server_id: str, first: bytes, second: bytes) -> bytes:
    message = b"\0".join((direction.encode(), claimed.encode(), server_id.encode(), first, second))
    return hmac.new(key, message, hashlib.sha256).digest()


def verify(key: bytes, direction: str, claimed: str, server_id: str, first: bytes, second: bytes,
           proof: object) -> bool:
    return isinstance(proof, bytes) and hmac.compare_digest(
        prove(key, direction, claimed, server_id, first, second), proof
    )
