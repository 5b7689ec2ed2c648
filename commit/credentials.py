"""The cluster's two secrets, where they live, and how ``node.py up`` makes them.

A node never serves without them (``consensus.auth``): the client secret lets a
process read, write and commit; the peer secret makes a process a node (it
signs Raft traffic, as PySyncObj's ``password``, and proves the node's own key
on the RPC port). Either can be set in ``[cluster]`` of ``cluster.toml``
(``secret``, ``peer_secret``). A secret not set there lives in a file of the
data directory, created with mode 0600 the first time a node of the config is
started, and read from there by every client that loads the same config.
Like ssh with its keys, a secret file that others may read is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

CLIENT_SECRET_FILE = "client.secret"
PEER_SECRET_FILE = "peer.secret"
SECRET_BYTES = 32


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the file."""


def read_secret(path: Path) -> str | None:
    """The secret in ``path``, or None if there is none yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretFileError(f"{path}: others may read it (mode {stat.filemode(mode)}); chmod 600 it")
        text = f.read(4 * SECRET_BYTES + 1).decode("ascii", errors="replace").strip()
    if not text:
        raise SecretFileError(f"{path}: is empty; delete it to have a new secret made")
    return text


def ensure_secret(path: Path) -> str:
    """The secret in ``path``, made first if there is none.

    It is written whole to a private temporary file and then hard-linked into
    place, which fails if the name exists: two nodes starting at once agree on
    one secret, and no one ever reads a half-written file.
    """
    existing = read_secret(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    made = read_secret(path)
    if made is None:
        raise SecretFileError(f"{path}: vanished while it was being made")
    return made
