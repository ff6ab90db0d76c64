"""Sequences: integer id maps and the leave-one-out train/validation/test split."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
