"""Recommendation node: the top-k next items for every user (or a given list of users), with titles."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from maf_pipeline.devices import resolve_device
from maf_pipeline.inference import (
    check_k,
    load_model,
    recommendation_frame,
    top_k,
    user_histories,
)
from maf_pipeline.models import feature_tables

logger = logging.getLogger(__name__)


def requested_users(
    requested: list[str] | str | None, user_index: pd.DataFrame, idx_of: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The known users to recommend for (every user for ``None``; a string is a whitespace-separated list:
    ``kedro run --params`` splits on commas) and the requested ids the model does not know (logged)."""
    if requested is None:
        return user_index["user_id"].astype(str).tolist(), []
    ids = requested.split() if isinstance(requested, str) else requested
    wanted = list(dict.fromkeys(str(u) for u in ids))
    if not wanted:
        raise ValueError(
            f"recommend.users = {requested!r} names no user: that would replace the recommendations with "
            "an empty table. Use null for every user, or give user ids."
        )
    users = [u for u in wanted if u in idx_of]
    unknown = [u for u in wanted if u not in idx_of]
    if unknown:
        logger.warning(
            "%d of %d requested users are unknown to the model (not in user_index): %s%s; they get no "
            "recommendations and are listed in the recommendation report",
            len(unknown), len(wanted), unknown[:20], " ..." if len(unknown) > 20 else "",
        )  # fmt: skip
    return users, unknown


def recommend_top_k(
    trained_model: dict[str, Any],
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    filtered_items: pd.DataFrame,
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    recommend_params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Top-``k`` items after each user's whole history (training items + validation + test targets).

    ``users: null`` recommends for everyone; a list of raw user ids (or one string of ids separated by spaces)
    recommends for those, in that order. An empty list is an error (it would overwrite the recommendations
    with an empty table); null means every user. Ids the model does not know (filtered out by preprocessing,
    or never seen) are logged and listed in the report instead of failing the run. Returns the long table
    ``user_id, rank, item_id, title, score``.
    """
    p = recommend_params
    k, exclude_seen = check_k(p["k"]), bool(p["exclude_seen"])
    idx_of = dict(zip(user_index["user_id"].astype(str), user_index["user_idx"], strict=True))
    requested = p["users"]
    users, unknown = requested_users(requested, user_index, idx_of)
    histories = user_histories(train_sequences, valid_sequences, test_sequences)
    model = load_model(trained_model, feature_tables(image_features, text_features, category_features))
    device = resolve_device(str(p["device"]))
    items, scores = top_k(
        model,
        [histories[int(idx_of[u])] for u in users],
        k,
        exclude_seen,
        int(p["batch_size"]),
        device,
    )
    item_ids = np.empty(int(item_index["item_idx"].max()) + 1, dtype=object)
    item_ids[item_index["item_idx"].to_numpy()] = item_index["item_id"].astype(str).to_numpy()
    titles = dict(zip(filtered_items["item_id"], filtered_items["title"], strict=False))
    frame = recommendation_frame(users, "user_id", items, scores, item_ids, titles)
    report = {
        "architecture": trained_model["__metadata__"]["architecture"],
        "k": k,
        "exclude_seen": exclude_seen,
        "requested_users": "all" if requested is None else len(users) + len(unknown),
        "recommended_users": len(users),
        "num_unknown_users": len(unknown),
        "unknown_users": unknown,
        "distinct_items_recommended": int(frame["item_id"].nunique()),
        "catalog_coverage": round(frame["item_id"].nunique() / max(len(item_index), 1), 4),
    }
    logger.info(
        "recommended top-%d items for %d users (%d unknown), %d distinct items (%.1f%% of the catalog)",
        k,
        len(users),
        len(unknown),
        report["distinct_items_recommended"],
        100 * report["catalog_coverage"],
    )
    return frame, report
