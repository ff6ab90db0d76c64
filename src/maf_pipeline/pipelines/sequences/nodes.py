"""Sequence nodes: contiguous integer ids and the leave-one-out split of each user's time-ordered items.

Ids: ``item_idx`` 1..N in ascending ``item_id`` (string) order, 0 is padding; ``user_idx`` 0..U-1 in ascending
``user_id`` order, so the maps depend only on which ids survive preprocessing, not on row order.
Order inside a user: ascending timestamp, ties broken by the row order of ``kcore_interactions`` (which keeps
the raw file order), i.e. a stable sort.

A ``split`` column (train, valid, test; the pre-split benchmark files give one) is honoured instead of the
leave-one-out rule: training holds only the user's ``train`` rows, and the validation and test targets are
the user's ``valid`` and ``test`` rows, with the items before each as history.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SHORT_USERS = ("train_only", "drop")


def build_id_maps(kcore_interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map item ids to 1..N (0 = padding) and user ids to 0..U-1, both in sorted id order."""
    item_ids = np.sort(kcore_interactions["item_id"].astype(str).unique())
    user_ids = np.sort(kcore_interactions["user_id"].astype(str).unique())
    item_index = pd.DataFrame(
        {
            "item_idx": np.arange(1, len(item_ids) + 1, dtype=np.int64),
            "item_id": pd.array(item_ids, dtype=str),
        }
    )
    user_index = pd.DataFrame(
        {"user_idx": np.arange(len(user_ids), dtype=np.int64), "user_id": pd.array(user_ids, dtype=str)}
    )
    logger.info(
        "id maps: %s items (1..N, 0 = padding), %s users", f"{len(item_index):,}", f"{len(user_index):,}"
    )
    return item_index, user_index


def _lookup(ids: pd.Series, index: pd.DataFrame, id_col: str, idx_col: str) -> np.ndarray:
    """Integer indices of ``ids`` through an id map; an id absent from the map is an error."""
    codes = pd.Categorical(ids.astype(str), categories=index[id_col].astype(str)).codes
    if (codes < 0).any():
        missing = ids[codes < 0].iloc[0]
        raise ValueError(f"{id_col} {missing!r} is not in the {idx_col} map; rebuild the id maps")
    return index[idx_col].to_numpy(dtype=np.int64)[codes]


def _given_split(df: pd.DataFrame, order: np.ndarray) -> np.ndarray | None:
    """The input's ``split`` labels in sequence order (0 train, 1 valid, 2 test), or None without one."""
    if "split" not in df.columns:
        return None
    codes = pd.Categorical(df["split"].astype(str), categories=["train", "valid", "test"]).codes
    if (codes < 0).any():
        raise ValueError(f"split values must be train, valid or test; got {sorted(set(df['split']))}")
    logger.info("sequences: the input's split column is kept (train / valid / test rows as given)")
    return codes[order]


def _follows_split(labels: np.ndarray) -> bool:
    """A user's labels in time order are train rows, then one valid row, then one test row."""
    return len(labels) >= 3 and labels[-2] == 1 and labels[-1] == 2 and not (labels[:-2] != 0).any()


def build_sequences(
    kcore_interactions: pd.DataFrame,
    item_index: pd.DataFrame,
    user_index: pd.DataFrame,
    max_len: int,
    short_users: str = "train_only",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Leave-one-out split (paper, section 4.1): last item = test target, second last = validation target,
    the rest = training, untruncated (the trainer cuts its windows).

    Validation/test ``history`` is the most recent ``max_len`` items before the target (the test history ends
    with the validation item). Users with fewer than 3 interactions (possible only when k < 3) go to training
    whole (``short_users: train_only``, as SASRec does) or are dropped (``drop``).
    """
    if int(max_len) < 1:
        raise ValueError(f"sequences.max_len must be a positive integer, got {max_len!r}")
    if short_users not in SHORT_USERS:
        raise ValueError(f"sequences.short_users must be one of {SHORT_USERS}, got {short_users!r}")
    max_len = int(max_len)
    df = kcore_interactions.reset_index(drop=True)
    users = _lookup(df["user_id"], user_index, "user_id", "user_idx")
    items = _lookup(df["item_id"], item_index, "item_id", "item_idx")
    ts = np.asarray(df["timestamp"].dt.tz_convert("UTC").values).view("int64")
    order = np.lexsort((np.arange(len(df)), ts, users))  # user, then time, then row order (stable tie-break)
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]

    given = _given_split(df, order)
    train_users, train_items = [], []
    eval_users, valid_hist, valid_tgt, test_hist, test_tgt = [], [], [], [], []
    n_short = 0
    for s, e in tqdm(zip(starts, ends, strict=True), total=len(starts), desc="sequences", disable=None):
        user, seq = int(users[s]), items[s:e]
        if given is not None and not _follows_split(given[s:e]):
            n_short += 1
            continue
        if len(seq) < 3:
            n_short += 1
            if short_users == "train_only":
                train_users.append(user)
                train_items.append(seq)
            continue
        train_users.append(user)
        train_items.append(seq[:-2])
        eval_users.append(user)
        valid_hist.append(seq[max(0, len(seq) - 2 - max_len) : -2])
        valid_tgt.append(seq[-2])
        test_hist.append(seq[max(0, len(seq) - 1 - max_len) : -1])
        test_tgt.append(seq[-1])
    if not eval_users:
        raise ValueError(
            "No user has the 3 interactions a leave-one-out split needs; check the preprocessing k"
        )
    if n_short and given is not None:
        logger.warning(
            "%d users do not end with exactly one valid then one test row (a filter removed some): dropped",
            n_short,
        )
    elif n_short:
        logger.warning("%d users with fewer than 3 interactions: %s", n_short, short_users)

    def frame(user_col: list[int], **cols: object) -> pd.DataFrame:
        return pd.DataFrame({"user_idx": np.asarray(user_col, dtype=np.int64), **cols})

    train = frame(train_users, items=[np.asarray(x, dtype=np.int64) for x in train_items])
    valid = frame(eval_users, history=valid_hist, target=np.asarray(valid_tgt, dtype=np.int64))
    test = frame(eval_users, history=test_hist, target=np.asarray(test_tgt, dtype=np.int64))
    lengths = np.array([len(x) for x in train_items])
    logger.info(
        "sequences: %s train users (mean length %.1f, max %d), %s valid/test users, max_len %d",
        f"{len(train):,}",
        lengths.mean(),
        lengths.max(),
        f"{len(test):,}",
        max_len,
    )
    return train, valid, test
