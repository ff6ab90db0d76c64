"""Tiny synthetic data in the sequences/features contract, shared by model, training and evaluation tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from maf_pipeline.training import train_model


def make_features(num_items: int, seed: int = 0, dims: tuple[int, int, int] = (12, 8, 5)) -> dict[str, dict]:
    """``{name: {"features": (N + 1, dim)}}`` tables with row 0 zeros; categories are multi-hot."""
    g = torch.Generator().manual_seed(seed)
    dv, dt, dc = dims
    image = torch.randn(num_items + 1, dv, generator=g)
    text = torch.randn(num_items + 1, dt, generator=g)
    category = torch.zeros(num_items + 1, dc)
    category[torch.arange(1, num_items + 1), torch.arange(1, num_items + 1) % dc] = 1.0
    category[1::2, 0] = 1.0
    for t in (image, text, category):
        t[0] = 0.0
    return {"image": {"features": image}, "text": {"features": text}, "category": {"features": category}}


def make_sequences(
    num_users: int = 24, num_items: int = 30, length: tuple[int, int] = (5, 12), seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Deterministic walks ``i_{t+1} = i_t + step (mod N)``, step 1 or 3 per user, split leave-one-out."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for u in range(num_users):
        n = int(rng.integers(length[0], length[1] + 1))
        start, step = int(rng.integers(0, num_items)), (1, 3)[u % 2]
        seq = (start + step * np.arange(n)) % num_items + 1
        train.append((u, seq[:-2].astype(np.int64)))
        valid.append((u, seq[:-2].astype(np.int64), int(seq[-2])))
        test.append((u, seq[:-1].astype(np.int64), int(seq[-1])))
    return {
        "train_sequences": pd.DataFrame(train, columns=["user_idx", "items"]),
        "valid_sequences": pd.DataFrame(valid, columns=["user_idx", "history", "target"]),
        "test_sequences": pd.DataFrame(test, columns=["user_idx", "history", "target"]),
        "item_index": pd.DataFrame(
            {"item_idx": np.arange(1, num_items + 1), "item_id": [f"i{i}" for i in range(1, num_items + 1)]}
        ),
    }


def tiny_maf_params(**overrides: object) -> dict:
    """A small MAF block (fast on CPU)."""
    params = {
        "architecture": "maf",
        "modalities": ["image", "text", "category"],
        "d": 16,
        "d_mm": 8,
        "n_layers": 2,
        "n_heads": 2,
        "d_ff": 32,
        "fusion": "sum",
        "multitask": True,
        "mtl_lambda": 5.0,
        "dropout": 0.2,
        "attn_dropout": 0.2,
    }
    params.update(overrides)
    return params


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread, and a shared CPU costs no spin-waiting (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_training(checkpoints: Path | None, **overrides: Any) -> dict[str, Any]:
    """A training block for the tiny data: 3 epochs, batches of 8, lr 1e-2, no early stop, on the CPU, with
    checkpoints under ``checkpoints`` (None: none); every other key at the schema's default."""
    return {
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "early_stopping": {"metric": "ndcg@20", "patience": None},
        "device": "cpu",
        "checkpoint_dir": None if checkpoints is None else str(checkpoints),
        **overrides,
    }


def train_tiny(
    data: dict, features: dict, model_params: dict, params: dict, max_len: int = 6, seed: int = 7, **kw: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``train_model`` on ``make_sequences`` / ``make_features`` output: the artifact and the history."""
    return train_model(
        data["train_sequences"], data["valid_sequences"], data["item_index"], features["image"],
        features["text"], features["category"], model_params, params, max_len, seed, **kw,
    )  # fmt: skip
