"""Proof of the cluster secret on a new connection (HMAC challenge-response).

The server sends a fresh random nonce; the client answers with
HMAC-SHA256(secret, nonce || server id). The secret itself never crosses the
wire, and an answer cannot be replayed on another connection or to another
node because both the nonce and the server id are bound into it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

NONCE_BYTES = 16


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def prove(secret: str, nonce: bytes, server_id: str) -> bytes:
    return hmac.new(secret.encode(), nonce + server_id.encode(), hashlib.sha256).digest()


def verify(secret: str, nonce: bytes, server_id: str, proof: object) -> bool:
    return isinstance(proof, bytes) and hmac.compare_digest(
        prove(secret, nonce, server_id), proof
    )
