"""``tune``: Optuna search of one model's parameters on the validation metric (TPE, pruning, resumable)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
