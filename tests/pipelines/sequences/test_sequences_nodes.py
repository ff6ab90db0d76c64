"""Unit tests of the id maps and the leave-one-out split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maf_pipeline.pipelines.sequences.nodes import build_id_maps, build_sequences


def frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Interactions from (user, item, time) tuples."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "rating": np.float32(5.0),
            "timestamp": pd.to_datetime([r[2] for r in rows], utc=True, format="ISO8601"),
        }
    )


def split(df: pd.DataFrame, max_len: int = 50, short_users: str = "train_only"):
    """Id maps, then sequences, with item ids translated back to strings for readable asserts."""
    item_index, user_index = build_id_maps(df)
    train, valid, test = build_sequences(df, item_index, user_index, max_len, short_users)
    name = dict(zip(item_index["item_idx"], item_index["item_id"], strict=True))
    user = dict(zip(user_index["user_idx"], user_index["user_id"], strict=True))
    return item_index, user_index, train, valid, test, name, user


def test_id_maps_are_contiguous_sorted_and_leave_zero_for_padding():
    df = frame([("ub", "i10", "2016-01-01"), ("ua", "i2", "2016-01-02"), ("ub", "i2", "2016-01-03")])
    item_index, user_index = build_id_maps(df)
    assert item_index["item_idx"].tolist() == [1, 2]
    assert item_index["item_id"].tolist() == ["i10", "i2"]  # string order, ids stay strings
    assert user_index["user_idx"].tolist() == [0, 1]
    assert user_index["user_id"].tolist() == ["ua", "ub"]
    assert item_index["item_idx"].dtype == np.int64 and user_index["user_idx"].dtype == np.int64
    # the maps do not depend on row order
    shuffled = build_id_maps(df.iloc[::-1])
    pd.testing.assert_frame_equal(shuffled[0], item_index)
    pd.testing.assert_frame_equal(shuffled[1], user_index)


def test_leave_one_out_in_time_order():
    rows = [("u", f"i{n}", f"2016-01-{10 - n:02d}") for n in range(6)]  # file order is reverse time order
    rows += [("v", "i0", "2016-02-01"), ("v", "i1", "2016-02-02"), ("v", "i2", "2016-02-03")]
    *_, train, valid, test, name, user = split(frame(rows))
    by_user = {
        user[u]: [name[i] for i in items] for u, items in zip(train["user_idx"], train["items"], strict=True)
    }
    assert by_user == {"u": ["i5", "i4", "i3", "i2"], "v": ["i0"]}
    assert train["items"].map(lambda x: x.dtype).eq(np.int64).all()
    v = {user[u]: ([name[i] for i in h], name[t]) for u, h, t in valid.itertuples(index=False)}
    t = {user[u]: ([name[i] for i in h], name[t]) for u, h, t in test.itertuples(index=False)}
    assert v == {"u": (["i5", "i4", "i3", "i2"], "i1"), "v": (["i0"], "i1")}
    assert t == {"u": (["i5", "i4", "i3", "i2", "i1"], "i0"), "v": (["i0", "i1"], "i2")}
    assert valid["target"].dtype == np.int64 and test["user_idx"].dtype == np.int64


def test_histories_are_truncated_to_the_most_recent_max_len_but_train_is_not():
    rows = [("u", f"i{n:02d}", f"2016-01-{n + 1:02d}") for n in range(10)]
    *_, train, valid, test, name, _ = split(frame(rows), max_len=3)
    assert [name[i] for i in train["items"].iloc[0]] == [f"i{n:02d}" for n in range(8)]
    assert [name[i] for i in valid["history"].iloc[0]] == ["i05", "i06", "i07"]
    assert name[valid["target"].iloc[0]] == "i08"
    assert [name[i] for i in test["history"].iloc[0]] == ["i06", "i07", "i08"]
    assert name[test["target"].iloc[0]] == "i09"


def test_equal_timestamps_keep_row_order():
    rows = [
        ("u", "b", "2016-01-01"),
        ("u", "a", "2016-01-01"),
        ("u", "c", "2016-01-01"),
        ("u", "d", "2015-01-01"),
    ]
    *_, train, valid, test, name, _ = split(frame(rows))
    assert [name[i] for i in train["items"].iloc[0]] == ["d", "b"]
    assert name[valid["target"].iloc[0]] == "a"
    assert name[test["target"].iloc[0]] == "c"


def test_short_users_train_only_or_dropped():
    rows = [("long", i, f"2016-01-0{n + 1}") for n, i in enumerate("abc")] + [("short", "a", "2016-01-01")]
    *_, train, valid, test, _, user = split(frame(rows), short_users="train_only")
    assert sorted(user[u] for u in train["user_idx"]) == ["long", "short"]
    assert [user[u] for u in test["user_idx"]] == ["long"] == [user[u] for u in valid["user_idx"]]
    *_, train, _, _, _, user = split(frame(rows), short_users="drop")
    assert [user[u] for u in train["user_idx"]] == ["long"]


def test_bad_parameters_and_unknown_ids_fail_clearly():
    df = frame([("u", i, f"2016-01-0{n + 1}") for n, i in enumerate("abc")])
    item_index, user_index = build_id_maps(df)
    with pytest.raises(ValueError, match="max_len"):
        build_sequences(df, item_index, user_index, 0)
    with pytest.raises(ValueError, match="short_users"):
        build_sequences(df, item_index, user_index, 5, "keep")
    with pytest.raises(ValueError, match="'z' is not in the item_idx map"):
        build_sequences(frame([("u", "z", "2016-01-01")]), item_index, user_index, 5)
    with pytest.raises(ValueError, match="3 interactions"):
        build_sequences(df.iloc[:2], item_index, user_index, 5)


def test_sequences_round_trip_through_parquet(tmp_path):
    rows = [(f"u{u}", f"i{(u * 3 + n) % 7}", f"2016-01-{n + 1:02d}") for u in range(5) for n in range(4 + u)]
    *_, train, valid, test, _, _ = split(frame(rows), max_len=4)
    for name, df in {"train": train, "valid": valid, "test": test}.items():
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path)
        back = pd.read_parquet(path)
        assert back["user_idx"].dtype == np.int64
        col = "items" if name == "train" else "history"
        assert [list(x) for x in back[col]] == [list(x) for x in df[col]]
    assert test["history"].map(len).max() == 4
    # every non-target item appears in training: the split loses nothing and adds nothing
    total = train["items"].map(len).sum() + 2 * len(test)
    assert total == len(rows)
