"""Shared fixtures: one torch thread per test (see tests/models/synthetic.py)."""

from tests.models.synthetic import one_torch_thread

__all__ = ["one_torch_thread"]
