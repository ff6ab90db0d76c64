"""Precomputed item embeddings (CLIP, a company encoder, ...) as a catalog dataset, checked on load.

Three file layouts, ``format: auto`` telling them apart by the file name:

* ``.npy``: a 2-D float array, row k = the item whose index is k in ``index_filepath``;
* Parquet (``.parquet``/``.pq``): an id column (``id_column``) and either one list/array column
  (``vector_column``) or float columns (every column but the id; ``vector_columns`` to name them);
* raw little-endian float32 (``raw_float32``; any other name, e.g. ``Scientific.feat1CLS``): no header,
  ``dim`` columns declared in the catalog, row k = index k.

Rows without their own id column are mapped to item ids by ``index_filepath`` (``raw id<TAB>index``, e.g.
``item2index``; 0-based rows unless ``index_base`` says otherwise). Checked on load: the declared ``dim``,
finite values, duplicate ids, and that the row count matches the index file. ``load`` returns an
:class:`ItemEmbeddings` with the ids, the float32 matrix and the provenance (file, sha256, format, dims) that
the features manifest records. ``filepath: null`` (the base catalog's default) loads ``None``: no file.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str, get_protocol_and_path

FORMATS = ("auto", "npy", "parquet", "raw_float32")


@dataclass
class ItemEmbeddings:
    """Item ids (one per row), their vectors (float32, rows x dim) and where they came from."""

    ids: list[str]
    vectors: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.vectors.shape[1])


def _sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = PurePosixPath(path).name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "raw_float32"


def read_index_rows(text: str, name: str, base: int = 0) -> dict[int, str]:
    """``raw id<TAB>index`` lines as row -> raw id; a repeated id or row, or a malformed line, is a ValueError
    naming the file and line (the benchmark reader's ``item2index``/``user2index`` and ``index_filepath``)."""
    rows: dict[int, str] = {}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
            raise ValueError(f"{name}:{number}: expected 'raw id<TAB>integer index', got {line[:80]!r}")
        raw, row = parts[0].strip(), int(parts[1]) - base
        if raw in seen or row in rows:
            raise ValueError(f"{name}:{number}: duplicate id {raw!r} or index {parts[1].strip()}")
        rows[row] = raw
        seen.add(raw)
    return rows


class EmbeddingFileDataset(AbstractDataset[None, "ItemEmbeddings | None"]):
    """Read-only dataset of precomputed item vectors (see the module docstring for the layouts)."""

    def __init__(
        self,
        filepath: str | None = None,
        format: str = "auto",
        dim: int | None = None,
        index_filepath: str | None = None,
        index_base: int = 0,
        id_column: str = "item_id",
        vector_column: str | None = None,
        vector_columns: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise DatasetError(f"EmbeddingFileDataset format must be one of {FORMATS}, got {format!r}")
        self._filepath = filepath
        self._format = format
        self._dim = None if dim is None else int(dim)
        self._index_filepath = index_filepath
        self._index_base = int(index_base)
        self._id_column = id_column
        self._vector_column = vector_column
        self._vector_columns = vector_columns
        self._storage_options = storage_options or {}
        self.metadata = metadata

    def _fs_path(self, filepath: str) -> tuple[Any, str]:
        protocol, path = get_protocol_and_path(filepath)
        return fsspec.filesystem(protocol, **self._storage_options), get_filepath_str(
            PurePosixPath(path), protocol
        )

    def load(self) -> ItemEmbeddings | None:
        if self._filepath is None:
            return None
        fs, path = self._fs_path(self._filepath)
        if not fs.exists(path):
            raise DatasetError(f"Embedding file not found: {path}")
        fmt = _format(path, self._format)
        ids, vectors = self._read(fs, path, fmt)
        if vectors.ndim != 2:
            raise DatasetError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise DatasetError(
                f"{path}: vectors have {vectors.shape[1]} dimensions, the catalog declares {self._dim}"
            )
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise DatasetError(
                f"{path}: {int(bad.sum())} rows hold NaN or infinite values (rows {rows}, ids "
                f"{[ids[r] for r in rows]})"
            )
        duplicated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicated:
            raise DatasetError(f"{path}: {len(duplicated)} ids appear on several rows, e.g. {duplicated[:5]}")
        source = {
            "file": path,
            "sha256": _sha256(fs, path),
            "format": fmt,
            "rows": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "index_file": self._index_filepath,
        }
        return ItemEmbeddings(ids, np.ascontiguousarray(vectors, dtype=np.float32), source)

    def _read(self, fs: Any, path: str, fmt: str) -> tuple[list[str], np.ndarray]:
        if fmt == "parquet":
            return self._read_parquet(fs, path)
        with fs.open(path, "rb") as handle:
            data = handle.read()
        if fmt == "npy":
            import io

            vectors = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            if self._dim is None:
                raise DatasetError(f"{path}: raw float32 needs the vector width: set dim in the catalog")
            if len(data) % (4 * self._dim):
                raise DatasetError(
                    f"{path}: {len(data)} bytes is not a whole number of {self._dim}-float32 rows"
                )
            vectors = np.frombuffer(data, dtype="<f4").reshape(-1, self._dim)
        return self._index_ids(path, len(vectors)), vectors.astype(np.float32, copy=False)

    def _index_ids(self, path: str, n_rows: int) -> list[str]:
        if self._index_filepath is None:
            raise DatasetError(f"{path}: rows carry no ids; set index_filepath (raw id<TAB>row index)")
        fs, index_path = self._fs_path(self._index_filepath)
        with fs.open(index_path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
        try:
            rows = read_index_rows(text, PurePosixPath(index_path).name, self._index_base)
        except ValueError as error:
            raise DatasetError(str(error)) from error
        if sorted(rows) != list(range(n_rows)):
            raise DatasetError(
                f"{path}: {n_rows} rows, but the index file {index_path} maps {len(rows)} ids to rows "
                f"{min(rows, default=None)}..{max(rows, default=None)}: the row count does not match"
            )
        return [rows[r] for r in range(n_rows)]

    def _read_parquet(self, fs: Any, path: str) -> tuple[list[str], np.ndarray]:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        names = table.column_names
        if self._id_column not in names:
            if self._index_filepath is None:
                raise DatasetError(f"{path}: no id column {self._id_column!r} (columns {names[:10]})")
            ids = None
        else:
            ids = [str(v) for v in table.column(self._id_column).to_pylist()]
        vector_column = self._vector_column
        if vector_column is None and self._vector_columns is None:
            rest = [c for c in names if c != self._id_column]
            vector_column = rest[0] if len(rest) == 1 and _is_list(table.schema.field(rest[0]).type) else None
        if vector_column is not None:
            vectors = np.asarray(table.column(vector_column).to_pylist(), dtype=np.float32)
        else:
            columns = self._vector_columns or [c for c in names if c != self._id_column]
            vectors = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in columns])
        return (ids if ids is not None else self._index_ids(path, len(vectors))), vectors

    def save(self, data: None) -> None:
        raise DatasetError("EmbeddingFileDataset is read-only: embeddings are an input of the pipeline.")

    def _exists(self) -> bool:
        if self._filepath is None:
            return False
        fs, path = self._fs_path(self._filepath)
        return fs.exists(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "format": self._format, "dim": self._dim,
                "index_filepath": self._index_filepath}  # fmt: skip


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
