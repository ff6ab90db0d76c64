"""``full``: the end-to-end chain, raw files to the trained model, its report and recommendations."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
