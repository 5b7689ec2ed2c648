"""Transaction errors, in FoundationDB's manner: each says whether to retry and whether a commit may
have happened. They travel over the wire like the errors of ``consensus.errors``."""

from __future__ import annotations

from commit.outcomes import FORGOTTEN
from consensus.errors import ClusterError, register_error


@register_error
class Conflict(ClusterError):
    """Another transaction got there first (stale read, or a lock): nothing was committed; retry."""

    code = "conflict"
    retryable = True


@register_error
class CommitUnknown(ClusterError):
    """The commit may or may not have happened; ``await db.status(exc.txid)`` tells which."""

    code = "commit_unknown"
    default_maybe_applied = True

    @property
    def txid(self) -> str:
        return str(self.detail.get("txid", ""))

    @property
    def forgotten(self) -> bool:
        """Whether the outcome was forgotten: decided so long ago that nobody asked still knows which way
        (docs/PROTOCOLS.md, "Forgetting"). Asking again will not tell; it was never presumed aborted."""
        return self.detail.get("outcome") == FORGOTTEN

    @property
    def participants(self) -> tuple[str, ...]:
        raw = self.detail.get("participants", ())
        return tuple(p for p in raw if isinstance(p, str)) if isinstance(raw, (list, tuple)) else ()
