"""The inputs every model run needs, carried as one value: the three splits, the item index and the three
feature tables (compare, tune and the benchmarks train many models on the same inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class ModelInputs:
    """``train/valid/test_sequences`` and ``item_index`` of the sequences pipeline, and the ``image``,
    ``text`` and ``category`` feature datasets (``{"features": (N + 1, dim), ...}`` or None)."""

    train_sequences: pd.DataFrame
    valid_sequences: pd.DataFrame
    item_index: pd.DataFrame
    test_sequences: pd.DataFrame | None = None  # None for a tuner: it never reads the test split
    image_features: dict[str, Any] | None = None
    text_features: dict[str, Any] | None = None
    category_features: dict[str, Any] | None = None

    @property
    def num_items(self) -> int:
        """Items in the index (ids 1..N; 0 is padding)."""
        return int(self.item_index["item_idx"].max())

    @property
    def features(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        """The image, text and category feature datasets, in the order the models' loaders take them."""
        return self.image_features, self.text_features, self.category_features


def bundle_model_inputs(
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    item_index: pd.DataFrame,
    image_features: dict[str, Any] | None,
    text_features: dict[str, Any] | None,
    category_features: dict[str, Any] | None,
) -> ModelInputs:
    """Node: the seven datasets as one :class:`ModelInputs` (an in-memory dataset, passed by reference)."""
    return ModelInputs(
        train_sequences, valid_sequences, item_index, test_sequences, image_features, text_features,
        category_features,
    )  # fmt: skip
