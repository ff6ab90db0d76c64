"""``matplotlib.MatplotlibDataset`` with atomic saves (see :mod:`maf_pipeline.datasets.atomic`)."""

from __future__ import annotations

from typing import Any

from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset

from .atomic import _AtomicSave


class MatplotlibDataset(_AtomicSave, _MatplotlibDataset):
    """A single figure written to a temporary PNG beside the target, then renamed over it (a list or dict of
    figures is a folder of files: written as kedro-datasets writes it)."""

    def save(self, data: Any) -> None:
        if isinstance(data, list | dict):
            return _MatplotlibDataset.save(self, data)
        return super().save(data)
