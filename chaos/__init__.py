"""A Jepsen-style harness: a recorded history of client operations under faults, and its checkers."""
