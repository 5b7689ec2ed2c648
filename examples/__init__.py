"""Worked examples of the store and its saga engine; each one runs against a real cluster."""
