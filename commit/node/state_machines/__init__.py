"""The replicated state machines a node's Raft groups run: a shard, and the coordinator group."""
