"""Training pipeline: fits a registered sequential recommender (MAF by default) on the training windows."""

from .pipeline import create_model_pipeline, create_pipeline

__all__ = ["create_model_pipeline", "create_pipeline"]
