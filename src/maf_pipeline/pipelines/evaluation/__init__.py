"""Evaluation pipeline: leave-one-out ranking metrics for trained models and the popularity floor."""

from .pipeline import create_model_pipeline, create_pipeline, create_popularity_pipeline

__all__ = ["create_model_pipeline", "create_pipeline", "create_popularity_pipeline"]
