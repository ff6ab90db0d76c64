"""Training pipeline: fits a registered sequential recommender (MAF by default) on the training windows.

The Kedro wiring is imported on first use, so ``training.nodes`` (the trainer) also imports where Kedro is
not installed (``benchmarks/bench_training.py`` on a bare GPU machine, DDP workers).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_model_pipeline", "create_pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
