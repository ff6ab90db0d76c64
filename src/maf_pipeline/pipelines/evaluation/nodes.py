"""Evaluation nodes: leave-one-out ranking metrics of a trained model and of the popularity floor.

Protocols (``evaluation.protocol``): ``full`` ranks the target among all items except padding (optionally
minus the user's earlier items, ``mask_history``, default off as in RecBole); ``sampled`` ranks it among
``num_negatives`` seeded random items the user never interacted with. Ties are pessimistic (see
:mod:`maf_pipeline.metrics`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from maf_pipeline.devices import resolve_device
from maf_pipeline.metrics import metric_values, rank_targets, sample_negatives, summarize
from maf_pipeline.models import Popularity, feature_tables, model_from_artifact
from maf_pipeline.parameters import filled

logger = logging.getLogger(__name__)

SPLITS = ("valid", "test")


def evaluate_scorer(
    scorer: torch.nn.Module,
    num_items: int,
    max_len: int,
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    evaluation_params: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Rank each user's valid and test target with ``scorer`` and return summary metrics and per-user rows."""
    p = filled("evaluation", evaluation_params)  # the schema's defaults for keys a library caller omits
    protocol, ks, mask_history = p["protocol"], [int(k) for k in p["ks"]], bool(p["mask_history"])
    device = resolve_device(p["device"])
    scorer = scorer.to(device)
    train_items = dict(zip(train_sequences["user_idx"], train_sequences["items"], strict=True))
    valid_target = dict(zip(valid_sequences["user_idx"], valid_sequences["target"], strict=True))
    test_target = dict(zip(test_sequences["user_idx"], test_sequences["target"], strict=True))
    empty = np.empty(0, dtype=np.int64)

    def earlier(user: int, split: str) -> np.ndarray:
        items = np.asarray(train_items.get(user, empty), dtype=np.int64)
        return np.append(items, valid_target[user]) if split == "test" else items

    metrics: dict[str, Any] = {
        "protocol": protocol,
        "mask_history": mask_history,
        "num_negatives": int(p["num_negatives"]) if protocol == "sampled" else None,
        "tie_rule": "pessimistic",
        "num_items": int(num_items),
    }
    frames = []
    for offset, (split, frame) in enumerate(zip(SPLITS, (valid_sequences, test_sequences), strict=True)):
        users = frame["user_idx"].to_numpy(dtype=np.int64)
        histories = [np.asarray(h, dtype=np.int64) for h in frame["history"]]
        targets = frame["target"].to_numpy(dtype=np.int64)
        exclude = negatives = None
        if protocol == "sampled":
            seen = [np.concatenate([earlier(u, "test"), [test_target.get(u, 0)]]) for u in users]
            negatives = sample_negatives(seen, num_items, int(p["num_negatives"]), seed + offset)
        elif mask_history:
            exclude = [earlier(u, split) for u in users]
        ranks = rank_targets(
            scorer,
            histories,
            targets,
            max_len,
            int(p["batch_size"]),
            exclude,
            negatives,
            device,
            split,
            p["max_scores"],
        )
        metrics[split] = summarize(ranks, ks)
        frames.append(
            pd.DataFrame(
                {
                    "user_idx": users,
                    "split": split,
                    "target": targets,
                    "rank": ranks,
                    **metric_values(ranks, ks),
                }
            )
        )
    per_user = pd.concat(frames, ignore_index=True)
    return metrics, per_user


def _log(name: str, metrics: dict[str, Any]) -> None:
    for split in SPLITS:
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics[split].items() if k != "num_users")
        logger.info(
            "%s %s (%s, %d users): %s", name, split, metrics["protocol"], metrics[split]["num_users"], text
        )


def evaluate_model(
    trained_model: dict[str, Any],
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    evaluation_params: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Restore a ``<model>.trained_model`` artifact and evaluate it on the valid and test splits."""
    features = feature_tables(image_features, text_features, category_features)
    meta = trained_model["__metadata__"]
    model = model_from_artifact(trained_model, features)
    metrics, per_user = evaluate_scorer(
        model, meta["num_items"], meta["max_len"], train_sequences, valid_sequences, test_sequences,
        evaluation_params, int(seed),
    )  # fmt: skip
    metrics.update(
        architecture=meta["architecture"], best_epoch=meta.get("best_epoch"), seed=meta.get("seed")
    )
    _log(meta["architecture"], metrics)
    return metrics, per_user


def evaluate_popularity(
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    item_index: pd.DataFrame,
    evaluation_params: dict[str, Any],
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Evaluate the popularity ranking (training interaction counts) with the same protocol and metrics."""
    num_items = int(item_index["item_idx"].max())
    pop = Popularity.from_sequences(list(train_sequences["items"]), num_items)
    metrics, per_user = evaluate_scorer(
        pop, num_items, 1, train_sequences, valid_sequences, test_sequences, evaluation_params, int(seed)
    )
    metrics["architecture"] = "pop"
    _log("pop", metrics)
    return metrics, per_user
