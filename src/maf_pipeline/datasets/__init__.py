"""Custom Kedro datasets used by the catalog."""

from .raw_file import RawFileDataset, RawSource
from .safetensors_dataset import SafetensorsDataset

__all__ = ["RawFileDataset", "RawSource", "SafetensorsDataset"]
