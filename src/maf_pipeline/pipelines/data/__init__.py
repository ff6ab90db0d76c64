"""``data``: raw files to the sequences and the image store (``kedro run --pipelines=data``); no torch."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
