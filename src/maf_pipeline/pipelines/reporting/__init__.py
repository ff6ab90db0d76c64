"""Reporting pipeline: training curves, attention maps, data statistics and sequence-length plots."""

from .pipeline import create_model_pipeline, create_pipeline

__all__ = ["create_model_pipeline", "create_pipeline"]
