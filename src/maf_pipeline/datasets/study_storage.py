"""The tuner's study store as a catalog dataset: a handle to an SQLite file Optuna writes trial by trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class StudyStorageDataset(AbstractDataset[None, str]):
    """Read-only handle: ``load`` makes the folder and returns the SQLite URL of the study database.

    Optuna commits every finished trial, so the file is the resumable state of a search (a killed run loses at
    most the trial in progress); several studies (one per ``tune.study_name``) share one file.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> str:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self._path.resolve()}"

    def save(self, data: None) -> None:
        raise DatasetError("StudyStorageDataset is a handle: Optuna writes the study file itself.")

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
