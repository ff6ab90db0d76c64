"""Recommend pipeline: top-k next items per user from a trained model, with item titles."""

from .pipeline import create_model_pipeline, create_pipeline

__all__ = ["create_model_pipeline", "create_pipeline"]
