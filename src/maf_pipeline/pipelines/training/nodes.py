"""Training node: the trainer library's :func:`maf_pipeline.training.train_model`, wired per model namespace.

The machinery (windows, the loop, checkpoints, DDP) lives in :mod:`maf_pipeline.training`; this module only
names the node function the pipeline uses.
"""

from __future__ import annotations

from maf_pipeline.training import train_model

__all__ = ["train_model"]
