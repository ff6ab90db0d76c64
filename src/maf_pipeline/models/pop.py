"""Popularity baseline: every user gets the items ranked by their training interaction counts."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Popularity(nn.Module):
    """Scores each item by how often it occurs in the training sequences; the floor every model must beat."""

    architecture = "pop"

    def __init__(self, counts: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32).clone()
        counts[0] = float("-inf")  # padding is never recommended
        self.register_buffer("counts", counts)
        self.num_items = counts.numel() - 1

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], num_items: int) -> Popularity:
        """Count item occurrences over the given item-id sequences (ids 1..num_items)."""
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else []
        return cls(np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_items + 1)[: num_items + 1])

    def full_sort_scores(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The same count vector for every row of the batch, ``(B, N + 1)`` (a fresh tensor: callers mask
        items in place)."""
        return self.counts.expand(item_seq.size(0), -1).clone()
