"""Typed errors shared by the RPC layer, the replica groups and the client.

Every error says whether the operation that raised it *may have been applied*
(FoundationDB's ``maybe_committed``). A caller that retries such an operation
must do so idempotently (same client id and sequence number), which is what
the replicated session table makes safe.

Errors cross the wire as ``{"code": ..., "message": ..., "maybe_applied": ...,
**detail}`` and are rebuilt into the same class on the other side.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ClusterError(Exception):
    """Base of every error a node or the client library raises on purpose."""

    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    default_maybe_applied: ClassVar[bool] = False

    def __init__(
        self, message: str, /, *, maybe_applied: bool | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.maybe_applied = (
            self.default_maybe_applied if maybe_applied is None else maybe_applied
        )
        self.detail = detail

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.detail,
            "code": self.code,
            "message": self.message,
            "maybe_applied": self.maybe_applied,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, maybe_applied={self.maybe_applied})"


class InvalidRequest(ClusterError):
    """The request itself is wrong (types, sizes, unknown method): never applied."""

    code = "invalid_request"


class Unauthorized(ClusterError):
    """The peer did not prove it knows the cluster secret."""

    code = "unauthorized"


class NotLeader(ClusterError):
    """This replica does not lead the group; ``detail['leader']`` hints who does."""

    code = "not_leader"
    retryable = True

    @property
    def leader(self) -> str | None:
        leader = self.detail.get("leader")
        return leader if isinstance(leader, str) else None


class Unavailable(ClusterError):
    """No leader, no quorum, or the connection broke; retry later.

    ``maybe_applied`` is true when the request had already been handed over
    (a broken connection after sending, or a leader change while replicating).
    """

    code = "unavailable"
    retryable = True


class StorageUnavailable(Unavailable):
    """A file this node must write before it answers could not be written: a full disk, an I/O error.

    Nothing of the write remains (``consensus.framed_file`` cuts the file back to its last whole record),
    so nothing was applied, and the next request that needs the file tries the write again. It crosses the
    wire as ``unavailable``: to a client it is a node that cannot serve just now.
    """


class Timeout(ClusterError):
    """No answer in time: the operation may or may not have been applied."""

    code = "timeout"
    retryable = True
    default_maybe_applied = True


class SessionExpired(ClusterError):
    """The replicated session table no longer remembers this client's request.

    The request may have been applied before the session was evicted, so it is
    not applied again.
    """

    code = "session_expired"
    default_maybe_applied = True


class NotPrepared(ClusterError):
    """A decision for a transaction the participant never prepared and holds no record of: not applied, and
    final (the participant fenced the transaction, so it never will prepare it); the sender stops re-sending."""

    code = "not_prepared"


class InternalError(ClusterError):
    """A bug on the node; the node logged it and keeps serving."""

    code = "internal"
    default_maybe_applied = True


class CorruptFile(Exception):
    """A file this node wrote reads back wrong, other than a torn last write: the node refuses to start.

    Not a ``ClusterError``: it never crosses the wire. ``offset`` is the byte where the damage starts
    (None when the file's own format cannot say, as for a gzip stream); ``node.py start`` prints the
    message and exits, docs/OPERATIONS.md ("Corrupted files and a full disk") says what to do.
    """

    def __init__(self, path: object, offset: int | None, what: str) -> None:
        where = "" if offset is None else f" at byte {offset}"
        super().__init__(f"{path}{where}: {what}")
        self.path = str(path)
        self.offset = offset
        self.what = what


_BY_CODE: dict[str, type[ClusterError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        NotLeader,
        Unavailable,
        Timeout,
        SessionExpired,
        NotPrepared,
        InternalError,
    )
}


def register_error(cls: type[ClusterError]) -> type[ClusterError]:
    """Let a layer above define its own error codes, rebuilt by ``error_from_wire``."""
    if _BY_CODE.get(cls.code, cls) is not cls:
        raise ValueError(f"error code {cls.code!r} is already taken by {_BY_CODE[cls.code].__name__}")
    _BY_CODE[cls.code] = cls
    return cls


def error_from_wire(payload: Any) -> ClusterError:
    """Rebuild a typed error from its wire form; malformed payloads become InternalError."""
    if not isinstance(payload, dict):
        return InternalError(f"malformed error payload: {payload!r}")
    detail = dict(payload)
    code = detail.pop("code", None)
    message = detail.pop("message", "")
    maybe_applied = detail.pop("maybe_applied", None)
    cls = _BY_CODE.get(code, InternalError) if isinstance(code, str) else InternalError
    if not isinstance(message, str):
        message = repr(message)
    if not isinstance(maybe_applied, bool):
        maybe_applied = None
    return cls(message, maybe_applied=maybe_applied, **{str(k): v for k, v in detail.items()})
