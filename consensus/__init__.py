"""Agreement: Raft groups on PySyncObj bridged into trio, exactly-once sessions,
and the msgpack RPC layer. Knows nothing about keys or transactions."""
