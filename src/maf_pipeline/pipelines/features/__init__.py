"""Features: image acquisition, then VGG16 / BERT / multi-hot category tables aligned with the item index."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
