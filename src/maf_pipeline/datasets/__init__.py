"""Custom Kedro datasets used by the catalog.

``SafetensorsDataset`` is imported lazily: it needs torch (about 600 MB resident), which readers that only
need ``RawSource`` must not pay for.
"""

from typing import Any

from .embeddings import EmbeddingFileDataset, ItemEmbeddings
from .raw_file import RawFileDataset, RawSource
from .study_storage import StudyStorageDataset

__all__ = [
    "EmbeddingFileDataset",
    "ItemEmbeddings",
    "RawFileDataset",
    "RawSource",
    "SafetensorsDataset",
    "StudyStorageDataset",
]


def __getattr__(name: str) -> Any:
    if name == "SafetensorsDataset":
        from .safetensors_dataset import SafetensorsDataset

        return SafetensorsDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
