"""The words for where a transaction stands, defined once for the client, the cores and the nodes.

They cross the wire as they are (a status answer, a shard's state), so they are plain strings.
"""

COMMITTED = "committed"
ABORTED = "aborted"
PREPARED = "prepared"  # a participant voted yes and holds its locks; a Paxos Commit instance's "yes" value
PENDING = "pending"  # the authority knows the transaction and has not decided it (or cannot say yet)
UNKNOWN = "unknown"  # a status answer: the participants asked about are not the transaction's own
FORGOTTEN = "forgotten"  # a status answer: decided so long ago that everyone who knew has forgotten which way
DECIDED = (COMMITTED, ABORTED)
