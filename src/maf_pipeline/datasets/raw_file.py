"""A dataset that hands a node a lazy handle to a raw file instead of its contents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str, get_protocol_and_path


@dataclass(frozen=True)
class RawSource:
    """A raw input file: nodes open and stream it themselves so memory stays bounded."""

    path: str
    protocol: str = "file"
    storage_options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return PurePosixPath(self.path).name

    def open(self, mode: str = "rb"):
        """Open the raw bytes (no decompression: readers detect gzip themselves)."""
        fs = fsspec.filesystem(self.protocol, **dict(self.storage_options))
        return fs.open(self.path, mode)

    def exists(self) -> bool:
        """Whether the file is there."""
        fs = fsspec.filesystem(self.protocol, **dict(self.storage_options))
        return fs.exists(self.path)


class RawFileDataset(AbstractDataset[None, RawSource]):
    """Read-only dataset whose ``load`` returns a :class:`RawSource`, not the data."""

    def __init__(
        self,
        filepath: str,
        storage_options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._path = PurePosixPath(path)
        self._storage_options = storage_options or {}
        self.metadata = metadata

    def load(self) -> RawSource:
        source = RawSource(
            get_filepath_str(self._path, self._protocol),
            self._protocol,
            tuple(sorted(self._storage_options.items())),
        )
        if not source.exists():
            raise DatasetError(f"Raw input file not found: {source.path}")
        return source

    def save(self, data: None) -> None:
        raise DatasetError("RawFileDataset is read-only: raw inputs are never written by the pipeline.")

    def _exists(self) -> bool:
        return fsspec.filesystem(self._protocol, **self._storage_options).exists(str(self._path))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "protocol": self._protocol}
