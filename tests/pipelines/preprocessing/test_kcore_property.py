"""Property-based test of the k-core: the result is the largest subset in which every user and item keeps
enough interactions, checked against two independent reference implementations."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maf_pipeline.pipelines.preprocessing.nodes import EmptyStageError, kcore_filter

Row = tuple[str, str]


def to_frame(rows: list[Row]) -> pd.DataFrame:
    """Interactions with a timestamp per row (the k-core ignores time)."""
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "item_id": [i for _, i in rows],
            "rating": 1.0,
            "timestamp": pd.Timestamp("2016-01-01", tz="UTC") + pd.to_timedelta(range(len(rows)), unit="s"),
        }
    )


def satisfies(rows: list[Row], user_k: int, item_k: int) -> bool:
    """Whether every user has >= user_k and every item >= item_k of these rows."""
    users, items = Counter(u for u, _ in rows), Counter(i for _, i in rows)
    return all(c >= user_k for c in users.values()) and all(c >= item_k for c in items.values())


def naive_kcore(rows: list[Row], user_k: int, item_k: int) -> list[int]:
    """Positions kept by removing one offending row at a time until none offends (a different schedule)."""
    alive = list(range(len(rows)))
    while True:
        users = Counter(rows[p][0] for p in alive)
        items = Counter(rows[p][1] for p in alive)
        bad = next((p for p in alive if users[rows[p][0]] < user_k or items[rows[p][1]] < item_k), None)
        if bad is None:
            return alive
        alive.remove(bad)


def brute_force_kcore(rows: list[Row], user_k: int, item_k: int) -> list[int]:
    """Union of all row subsets meeting the bounds; valid subsets are closed under union, so this is the
    unique maximal one."""
    best: set[int] = set()
    for size in range(len(rows) + 1):
        for subset in combinations(range(len(rows)), size):
            if satisfies([rows[p] for p in subset], user_k, item_k):
                best |= set(subset)
    return sorted(best)


def kept_positions(rows: list[Row], user_k: int, item_k: int) -> list[int]:
    """Positions of the rows the node keeps (rows carry their position in the timestamp seconds)."""
    try:
        out, _ = kcore_filter(to_frame(rows), k=99, user_k=user_k, item_k=item_k)
    except EmptyStageError:
        return []
    return sorted(((out["timestamp"] - pd.Timestamp("2016-01-01", tz="UTC")).dt.total_seconds()).astype(int))


def rows_strategy(max_size: int) -> st.SearchStrategy[list[Row]]:
    """Random small interaction sets over few users and items (repeated pairs allowed)."""
    return st.lists(
        st.tuples(st.sampled_from([f"u{n}" for n in range(6)]), st.sampled_from([f"i{n}" for n in range(6)])),
        max_size=max_size,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy(11), user_k=st.integers(1, 3), item_k=st.integers(1, 3))
def test_kcore_is_the_maximal_valid_subset(rows, user_k, item_k):
    kept = kept_positions(rows, user_k, item_k)
    assert kept == brute_force_kcore(rows, user_k, item_k)


@settings(max_examples=80, deadline=None)
@given(rows=rows_strategy(80), user_k=st.integers(1, 5), item_k=st.integers(1, 5))
def test_kcore_matches_naive_removal_and_meets_bounds(rows, user_k, item_k):
    kept = kept_positions(rows, user_k, item_k)
    assert kept == naive_kcore(rows, user_k, item_k)
    assert satisfies([rows[p] for p in kept], user_k, item_k)
    # a fixed point: filtering again changes nothing
    if kept:
        assert kept_positions([rows[p] for p in kept], user_k, item_k) == list(range(len(kept)))
