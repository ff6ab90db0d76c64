"""Fixtures of the ingestion tests."""

from .raw_files import write_raw

__all__ = ["write_raw"]
