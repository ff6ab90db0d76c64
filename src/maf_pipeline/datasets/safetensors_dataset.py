"""Tensors through the catalog as safetensors files (no pickle).

torch is imported on the first load or save, not with the module: kedro-mlflow builds every catalog entry
when a run starts, and a data-side run (``--pipelines=data``) must not pay torch's ~500 MB of RSS for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maf_pipeline.locks import atomic_write

_META_KEY = "__metadata__"


class SafetensorsDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saves and loads ``dict[str, Tensor]``; an optional ``"__metadata__"`` entry (a JSON-able dict) too.

    Writes are atomic (a temporary file of a unique name, then rename) so a killed run never leaves a
    half-written artifact; the file's mode follows the umask like the other writers'.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if not self._filepath.exists():
            raise DatasetError(f"No tensor file at {self._filepath}")
        from safetensors import safe_open
        from safetensors.torch import load_file

        tensors: dict[str, Any] = dict(load_file(str(self._filepath)))

        with safe_open(str(self._filepath), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("json")
        if raw is not None:
            tensors[_META_KEY] = json.loads(raw)
        return tensors

    def save(self, data: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import save_file

        data = dict(data)
        meta = data.pop(_META_KEY, None)
        tensors = {k: v.detach().contiguous().cpu() for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != len(data):
            bad = sorted(set(data) - set(tensors))
            raise DatasetError(f"SafetensorsDataset can only save tensors; not tensors: {bad}")
        metadata = None if meta is None else {"json": json.dumps(meta)}
        atomic_write(self._filepath, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
