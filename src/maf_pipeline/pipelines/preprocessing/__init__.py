"""Preprocessing: date window, category subset, duplicates, multimodal completeness and k-core."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
