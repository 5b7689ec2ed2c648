"""Atomic-commit protocols as sans-IO cores: ``handle(event) -> effects``, no I/O, no clock."""
