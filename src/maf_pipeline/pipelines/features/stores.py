"""On-disk stores the features pipeline reads *and* grows: the image store and the per-item feature cache.

Kedro forbids a dataset being both input and output of one node, yet a resumable download and an incremental
encoding cache must see what is already there and add to it item by item (so an interrupted run keeps its
work). Like :class:`maf_pipeline.datasets.RawFileDataset`, these catalog datasets therefore hand the node a
lazy handle on a folder; the folder's location stays in the catalog, never in code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from kedro.io import AbstractDataset, DatasetError
from safetensors import SafetensorError, safe_open

from maf_pipeline.locks import atomic_write

if TYPE_CHECKING:  # torch (~500 MB of RSS) only where features are encoded: the image store is torch-free
    import torch

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")


def _atomic_write(target: Path, write: Any) -> None:
    """Write to a temporary file in the target's folder, then rename, so readers never see half a file."""
    atomic_write(target, write)


@dataclass(frozen=True)
class ImageFolder:
    """A folder holding at most one image per item, named ``<item id>.<ext>`` (the id percent-quoted)."""

    path: str
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    writable: bool = False

    @property
    def root(self) -> Path:
        """The folder."""
        return Path(self.path)

    def exists(self) -> bool:
        """Whether the folder is there."""
        return self.root.is_dir()

    def ids(self) -> set[str]:
        """Item ids that have an image file (one directory scan)."""
        if not self.exists():
            return set()
        found = set()
        with os.scandir(self.root) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if dot and not entry.name.startswith(".") and ext.lower() in self.extensions:
                    found.add(unquote(stem))
        return found

    def find(self, item_id: str) -> Path | None:
        """The image file of ``item_id``, or None."""
        stem = quote(str(item_id), safe="")
        for ext in self.extensions:
            for candidate in (f"{stem}.{ext}", f"{stem}.{ext.upper()}"):
                path = self.root / candidate
                if path.is_file():
                    return path
        return None

    def read(self, item_id: str) -> bytes | None:
        """The image bytes of ``item_id``, or None when it has no file."""
        path = self.find(item_id)
        return None if path is None else path.read_bytes()

    def fingerprint(self, item_id: str) -> str | None:
        """A content hash of the item's image (cache key part), or None."""
        data = self.read(item_id)
        return None if data is None else hashlib.blake2b(data, digest_size=16).hexdigest()

    def put(self, item_id: str, data: bytes, ext: str) -> Path:
        """Store ``data`` as the image of ``item_id`` (atomic; replaces any other-format file of the item)."""
        if not self.writable:
            raise PermissionError(f"Image folder {self.path} is read-only")
        ext = ext.lower().lstrip(".")
        target = self.root / f"{quote(str(item_id), safe='')}.{ext}"
        _atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
        self._drop_other_formats(item_id, keep=target)
        return target

    def put_file(self, item_id: str, source: Path, ext: str) -> Path:
        """Store a copy of a local file (a hard link when on the same file system, else a byte copy)."""
        if not self.writable:
            raise PermissionError(f"Image folder {self.path} is read-only")
        target = self.root / f"{quote(str(item_id), safe='')}.{ext.lower().lstrip('.')}"

        def _write(tmp: str) -> None:
            os.unlink(tmp)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)

        _atomic_write(target, _write)
        self._drop_other_formats(item_id, keep=target)
        return target

    def _drop_other_formats(self, item_id: str, keep: Path) -> None:
        while (other := self.find(item_id)) is not None and other != keep:
            other.unlink()


class ImageFolderDataset(AbstractDataset[None, ImageFolder]):
    """Catalog entry whose ``load`` returns an :class:`ImageFolder` handle (the folder may not exist yet)."""

    def __init__(
        self,
        path: str,
        writable: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._handle = ImageFolder(str(path), tuple(e.lower() for e in extensions), bool(writable))
        self.metadata = metadata

    def load(self) -> ImageFolder:
        return self._handle

    def save(self, data: None) -> None:
        raise DatasetError(
            "ImageFolderDataset is a handle: nodes add images through it, never by returning it."
        )

    def _exists(self) -> bool:
        return self._handle.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._handle.path, "writable": self._handle.writable}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of encoder settings (sorted-key JSON), the folder name of a cache table."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class CacheTable:
    """Encodings for one (modality, encoder settings) pair: append-only safetensors shards keyed by item."""

    directory: Path

    def _shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.safetensors")) if self.directory.is_dir() else []

    def load(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every cached row: ``(item_id, content fingerprint) -> 1-D tensor``; later shards win.

        A shard that cannot be read (truncated by a full disk, damaged, inconsistent) is named in a warning
        and moved aside as ``<name>.corrupt``, so its items are simply encoded again and later runs are not
        affected.
        """
        rows: dict[tuple[str, str], torch.Tensor] = {}
        for shard in self._shards():
            try:
                keys, features = _read_shard(shard)
            except FileNotFoundError:  # moved aside by a concurrent reader
                continue
            except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
                self._quarantine(shard, err)
                continue
            for pos, key in enumerate(keys):
                rows[key] = features[pos]
        return rows

    def _quarantine(self, shard: Path, err: BaseException) -> None:
        aside = shard.with_name(shard.name + ".corrupt")
        try:
            os.replace(shard, aside)
        except FileNotFoundError:
            return
        logger.warning(
            "Feature cache shard %s cannot be read (%s: %s); moved aside to %s, its items will be encoded "
            "again",
            *(shard, type(err).__name__, str(err)[:200], aside.name),
        )

    def lookup(self, item_ids: Iterable[str], fingerprints: Iterable[str]) -> dict[str, torch.Tensor]:
        """Cached rows of these items with this content (an item whose text or image changed is a miss)."""
        rows = self.load()
        hits = {}
        for key in zip(item_ids, fingerprints, strict=True):
            if (row := rows.get(key)) is not None:
                hits[key[0]] = row
        return hits

    def append(self, item_ids: Sequence[str], fingerprints: Sequence[str], features: torch.Tensor) -> None:
        """Write a new shard with these rows (atomic, so an interrupted run keeps every finished shard)."""
        if len(item_ids) == 0:
            return
        if features.shape[0] != len(item_ids) or len(fingerprints) != len(item_ids):
            raise ValueError("append: item_ids, fingerprints and feature rows must have the same length")
        from safetensors.torch import save_file

        index = json.dumps({"item_ids": list(map(str, item_ids)), "fingerprints": list(fingerprints)})
        name = f"shard-{time_ns_str()}-{uuid.uuid4().hex[:8]}.safetensors"
        tensors = {"features": features.detach().contiguous().cpu()}
        _atomic_write(self.directory / name, lambda tmp: save_file(tensors, tmp, metadata={"index": index}))

    def __len__(self) -> int:
        return len(self.load())


def _read_shard(shard: Path) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """A shard's keys and feature rows, checked for consistency (raises on anything unreadable)."""
    with safe_open(str(shard), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})["index"])
        features = handle.get_tensor("features")
    keys = list(zip(meta["item_ids"], meta["fingerprints"], strict=True))
    if features.ndim != 2 or features.shape[0] != len(keys):
        raise ValueError(f"{features.shape[0]} feature rows for {len(keys)} items")
    return keys, features


def time_ns_str() -> str:
    """Zero-padded nanosecond clock, so shard names sort in write order."""
    return f"{time.time_ns():020d}"


@dataclass(frozen=True)
class FeatureCache:
    """Root folder of all cache tables: ``<root>/<modality>/<settings hash>/`` with a ``settings.json``."""

    path: str

    def table(self, modality: str, settings: dict[str, Any]) -> CacheTable:
        """The table for these encoder settings (created on first use, its settings written beside it)."""
        directory = Path(self.path) / modality / settings_hash(settings)
        settings_file = directory / "settings.json"
        if not settings_file.exists():
            blob = json.dumps(settings, sort_keys=True, indent=2, default=str)
            _atomic_write(settings_file, lambda tmp: Path(tmp).write_text(blob))
        return CacheTable(directory)


class FeatureCacheDataset(AbstractDataset[None, FeatureCache]):
    """Catalog entry whose ``load`` returns a :class:`FeatureCache` handle on the per-item encoding cache."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._handle = FeatureCache(str(path))
        self.metadata = metadata

    def load(self) -> FeatureCache:
        return self._handle

    def save(self, data: None) -> None:
        raise DatasetError("FeatureCacheDataset is a handle: encoder nodes append to it, never return it.")

    def _exists(self) -> bool:
        return Path(self._handle.path).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._handle.path}
