"""``ingestion``: raw Amazon review and metadata dumps to ``interactions`` and ``items``."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
