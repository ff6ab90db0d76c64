"""``matplotlib.MatplotlibDataset`` with atomic saves (see :mod:`maf_pipeline.datasets.atomic`)."""

from __future__ import annotations

from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset

from .atomic import _AtomicSave


class MatplotlibDataset(_AtomicSave, _MatplotlibDataset):
    """A single figure written to a temporary PNG beside the target, then renamed over it."""
