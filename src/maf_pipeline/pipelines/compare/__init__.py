"""``compare``: baselines and MAF variants over seeds, and the paper's Tables 2-4 and Fig. 3."""

from .pipeline import create_compare_pipeline, create_pipeline

__all__ = ["create_compare_pipeline", "create_pipeline"]
