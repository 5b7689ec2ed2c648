"""The node process: its replica groups, RPC handlers, coordinator drivers, participant roles, watchers.

Nothing here is loaded by ``import commit``: the client library never needs it.
"""
