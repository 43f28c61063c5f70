"""Operator tooling: the ``warmi`` command."""
