"""The catalog's file datasets with atomic saves: a temporary file beside the target, then a rename.

Kedro-datasets write in place, so a run killed mid-save, or a second run writing the same artifact, left a
truncated Parquet file ("magic bytes not found", "file size is 0 bytes") that the next reader failed on.
These subclasses write to a hidden, per-process temporary name with the target's extension (matplotlib
infers the image format from it) and ``os.replace`` it over the target: readers see the old file or the new
one, never a part. Remote filesystems (``s3://`` ...) are written as before: their objects are atomic.
``MatplotlibDataset`` is in :mod:`maf_pipeline.datasets.atomic_matplotlib` (matplotlib stays out of runs that
write no figure).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.text import TextDataset as _TextDataset


def temporary_name(target: PurePosixPath) -> PurePosixPath:
    """A hidden name beside ``target``, unique per process and call, ending in the target's extension."""
    return target.with_name(f".{target.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}")


class _AtomicSave:
    """Mixin: ``save`` writes through :func:`temporary_name` and renames over the target (local files)."""

    _atomic_tmp: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        return self._atomic_tmp or super()._get_save_path()  # type: ignore[misc]

    def save(self, data: Any) -> None:
        if getattr(self, "_protocol", "file") not in ("file", "local"):
            return super().save(data)  # type: ignore[misc]
        target = super()._get_save_path()  # type: ignore[misc]
        os.makedirs(os.path.dirname(get_filepath_str(target, "file")) or ".", exist_ok=True)
        self._atomic_tmp = temporary_name(target)
        tmp = get_filepath_str(self._atomic_tmp, "file")
        try:
            super().save(data)  # type: ignore[misc]
            os.replace(tmp, get_filepath_str(target, "file"))
        finally:
            self._atomic_tmp = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return None


class ParquetDataset(_AtomicSave, _ParquetDataset):
    """``pandas.ParquetDataset`` with atomic saves."""


class CSVDataset(_AtomicSave, _CSVDataset):
    """``pandas.CSVDataset`` with atomic saves."""


class JSONDataset(_AtomicSave, _JSONDataset):
    """``json.JSONDataset`` with atomic saves."""


class TextDataset(_AtomicSave, _TextDataset):
    """``text.TextDataset`` with atomic saves."""
