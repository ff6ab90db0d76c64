"""Unit tests of each preprocessing node on small hand-made frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maf_pipeline.pipelines.preprocessing.nodes import (
    EmptyStageError,
    build_dataset_statistics,
    deduplicate_interactions,
    filter_categories,
    filter_date_window,
    filter_multimodal_completeness,
    filter_verified_images,
    kcore_filter,
    select_items,
)


def frame(rows: list[tuple], tz: str | None = "UTC") -> pd.DataFrame:
    """Interactions from (user, item, time[, rating]) tuples."""
    users, items, times = zip(*[r[:3] for r in rows], strict=True)
    ratings = [r[3] if len(r) > 3 else 5.0 for r in rows]
    ts = pd.to_datetime(list(times), format="ISO8601")
    if tz is not None and ts.tz is None:
        ts = ts.tz_localize(tz)
    return pd.DataFrame({"user_id": list(users), "item_id": list(items), "rating": ratings, "timestamp": ts})


def items_frame(rows: dict[str, tuple[str, list[str]]]) -> pd.DataFrame:
    """Items from {item_id: (text, categories)}."""
    return pd.DataFrame(
        {
            "item_id": list(rows),
            "title": [t for t, _ in rows.values()],
            "text": [t for t, _ in rows.values()],
            "categories": [c for _, c in rows.values()],
            "image_urls": [[] for _ in rows],
            "brand": ["" for _ in rows],
        }
    )


# ------------------------------------------------------------------------------------------ date window
WINDOW = {"start": "2016-01-01", "end": "2017-12-31"}


def test_window_is_inclusive_in_utc():
    rows = [
        ("u", "before", "2015-12-31 23:59:59"),
        ("u", "first_second", "2016-01-01 00:00:00"),
        ("u", "last_second", "2017-12-31 23:59:59"),
        ("u", "after", "2018-01-01 00:00:00"),
    ]
    out, counts = filter_date_window(frame(rows), WINDOW)
    assert out["item_id"].tolist() == ["first_second", "last_second"]
    assert counts["stage"] == "date_window"
    assert counts["before"] == {"interactions": 4, "users": 1, "items": 4}
    assert counts["after"] == {"interactions": 2, "users": 1, "items": 2}
    assert counts["removed_interactions"] == 2


def test_window_compares_instants_across_time_zones():
    # 00:30 on 1 Jan 2018 in Paris is 23:30 on 31 Dec 2017 in UTC: inside; 23:30 on 31 Dec 2015 in New York
    # is 04:30 on 1 Jan 2016 UTC: inside too.
    df = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "item_id": ["x", "y", "z"],
            "rating": [1.0, 2.0, 3.0],
            "timestamp": [
                pd.Timestamp("2018-01-01 00:30", tz="Europe/Paris"),
                pd.Timestamp("2015-12-31 23:30", tz="America/New_York"),
                pd.Timestamp("2018-01-01 00:30", tz="UTC"),
            ],
        }
    )
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    out, _ = filter_date_window(df, WINDOW)
    assert out["item_id"].tolist() == ["x", "y"]
    assert str(out["timestamp"].dt.tz) == "UTC"


def test_window_takes_naive_timestamps_as_utc_and_conforms_dtypes():
    df = frame([("u", "a", "2016-06-01"), ("u", "b", "2019-06-01")], tz=None)
    df["rating"] = df["rating"].astype("float64")
    out, _ = filter_date_window(df.assign(extra=1), WINDOW)
    assert list(out.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert out["rating"].dtype == np.float32
    assert str(out["timestamp"].dt.tz) == "UTC"
    assert out["item_id"].tolist() == ["a"]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (None, ["a", "b", "c"]),
        ({"start": None, "end": None}, ["a", "b", "c"]),
        ({"start": "2016-01-01", "end": None}, ["b", "c"]),
        ({"start": None, "end": "2017-12-31"}, ["a", "b"]),
        # a bound with a time of day is an exact instant (inclusive)
        ({"start": None, "end": "2017-06-01T12:00:00"}, ["a", "b"]),
        ({"start": None, "end": "2017-06-01T11:59:59"}, ["a"]),
    ],
)
def test_window_null_bounds_are_open(window, expected):
    df = frame([("u", "a", "2010-01-01"), ("u", "b", "2017-06-01 12:00:00"), ("u", "c", "2030-01-01")])
    out, _ = filter_date_window(df, window)
    assert out["item_id"].tolist() == expected


def test_window_that_empties_names_stage_and_counts():
    df = frame([("u1", "a", "2010-01-01"), ("u2", "b", "2011-01-01"), ("u2", "a", "2012-01-01")])
    with pytest.raises(EmptyStageError, match=r"'date_window'.*3 interactions, 2 users, 2 items"):
        filter_date_window(df, WINDOW)


# ---------------------------------------------------------------------------------------------- category
CAT_ITEMS = items_frame(
    {
        "dress": ("d", ["Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses"]),
        "shirt": ("s", ["Clothing, Shoes & Jewelry", "Men", "Clothing", "Shirts"]),
        "toy": ("t", ["Clothing, Shoes & Jewelry", "Girls", "Clothing"]),
        "cap": ("c", ["Clothing, Shoes & Jewelry", "Boys", "Accessories"]),
        "womens": ("w", ["Clothing, Shoes & Jewelry", "Womens Fashion"]),
        "art": ("a", ["Magazine Subscriptions", "Arts, Music &amp; Photography"]),
        "bare": ("b", []),
    }
)
CAT_INTERACTIONS = frame(
    [
        (f"u{n}", item, "2016-05-01")
        for n, item in enumerate(["dress", "shirt", "toy", "cap", "womens", "art", "bare"])
    ]
    + [("u9", "ghost", "2016-05-01")]
)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["Women"], ["dress"]),
        (["women"], ["dress"]),  # case-insensitive
        (["Men"], ["shirt"]),  # whole labels: "Men" does not match "Women" or "Womens Fashion"
        (["Boys", "Girls"], ["toy", "cap"]),  # the paper's Boys & Girls subset
        (["Arts, Music & Photography"], ["art"]),  # HTML entities decoded
        ([" CLOTHING "], ["dress", "shirt", "toy"]),  # any position in the path, trimmed
    ],
)
def test_category_filter_matches_whole_labels(labels, expected):
    out, counts = filter_categories(CAT_INTERACTIONS, CAT_ITEMS, labels)
    assert out["item_id"].tolist() == expected
    assert counts["labels"] == labels
    assert counts["items_without_metadata"] == 1


def test_category_filter_null_keeps_everything_including_unknown_items():
    for labels in (None, []):
        out, counts = filter_categories(CAT_INTERACTIONS, CAT_ITEMS, labels)
        pd.testing.assert_frame_equal(out, CAT_INTERACTIONS)
        assert counts["before"] == counts["after"]


def test_category_filter_empty_result_names_stage():
    with pytest.raises(EmptyStageError, match=r"'category'.*8 interactions.*\['Shoes'\]"):
        filter_categories(CAT_INTERACTIONS, CAT_ITEMS, ["Shoes"])


def test_repeated_item_ids_in_items_are_rejected():
    doubled = pd.concat([CAT_ITEMS, CAT_ITEMS.iloc[:1]])
    with pytest.raises(ValueError, match="unique item_id"):
        filter_categories(CAT_INTERACTIONS, doubled, ["Women"])


# ------------------------------------------------------------------------------------------------- dedup
DUPS = frame(
    [
        ("u1", "a", "2016-03-01", 1.0),
        ("u1", "a", "2016-01-01", 2.0),  # earliest of (u1, a)
        ("u2", "b", "2016-02-01", 3.0),
        ("u1", "a", "2016-05-01", 4.0),  # latest of (u1, a)
        ("u2", "b", "2016-02-01", 5.0),  # same time as the row above: file order breaks the tie
        ("u2", "c", "2016-01-01", 6.0),
    ]
)


@pytest.mark.parametrize(
    ("keep", "ratings"),
    [("first", [2.0, 3.0, 6.0]), ("last", [4.0, 5.0, 6.0]), ("all", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
)
def test_dedup_keep_modes_with_stable_ties_and_original_order(keep, ratings):
    out, counts = deduplicate_interactions(DUPS, keep)
    assert out["rating"].tolist() == ratings  # rows stay in their input order
    assert counts["duplicate_rows"] == 3
    assert counts["after"]["interactions"] == len(ratings)
    assert counts["keep"] == keep


def test_dedup_rejects_unknown_mode():
    with pytest.raises(ValueError, match="dedup_keep"):
        deduplicate_interactions(DUPS, "newest")


# ------------------------------------------------------------------------------------------ completeness
COMPLETE_ITEMS = items_frame(
    {
        "full": ("a dress", ["Clothing", "Women"]),
        "no_image": ("a shirt", ["Clothing", "Men"]),
        "no_text": ("   ", ["Clothing", "Men"]),
        "no_category": ("a cap", []),
        "blank_category": ("a hat", ["  "]),
        "unlisted_image": ("a sock", ["Clothing"]),
    }
)
IMAGES = pd.DataFrame(
    {
        "item_id": ["full", "no_image", "no_text", "no_category", "blank_category"],
        "has_image": [True, False, True, True, True],
    }
)
COMPLETE_INTERACTIONS = frame(
    [("u1", "full", "2016-01-01"), ("u2", "full", "2016-01-02")]
    + [("u1", item, "2016-02-01") for item in COMPLETE_ITEMS["item_id"].iloc[1:]]
    + [("u3", "ghost", "2016-03-01"), ("u4", "ghost", "2016-03-02")]
)


@pytest.mark.parametrize(
    ("modalities", "kept", "lacking"),
    [
        ([], ["full", "no_image", "no_text", "no_category", "blank_category", "unlisted_image"], {}),
        (["image"], ["full", "no_text", "no_category", "blank_category"], {"image": 2}),
        (["text"], ["full", "no_image", "no_category", "blank_category", "unlisted_image"], {"text": 1}),
        (["category"], ["full", "no_image", "no_text", "unlisted_image"], {"category": 2}),
        (["image", "text", "category"], ["full"], {"image": 2, "text": 1, "category": 2}),
    ],
)
def test_completeness_per_modality(modalities, kept, lacking):
    out, counts = filter_multimodal_completeness(COMPLETE_INTERACTIONS, COMPLETE_ITEMS, IMAGES, modalities)
    assert out["item_id"].drop_duplicates().tolist() == kept
    assert counts["items_lacking"] == lacking
    # the item without metadata is always dropped and counted apart
    assert counts["items_without_metadata"] == 1
    assert counts["interactions_without_metadata"] == 2
    assert "ghost" not in set(out["item_id"])


def test_completeness_rejects_unknown_modality():
    with pytest.raises(ValueError, match="audio"):
        filter_multimodal_completeness(COMPLETE_INTERACTIONS, COMPLETE_ITEMS, IMAGES, ["audio"])


def test_completeness_empty_result_names_stage():
    no_images = IMAGES.assign(has_image=False)
    with pytest.raises(EmptyStageError, match=r"'completeness'.*9 interactions, 4 users, 7 items"):
        filter_multimodal_completeness(COMPLETE_INTERACTIONS, COMPLETE_ITEMS, no_images, ["image"])


# ------------------------------------------------------------------------------------------------ k-core
def test_kcore_cascades_to_a_fixed_point():
    # u1..u3 each rate a, b; u3 also rates c, which only u3 rates. With k=2: c goes (1 rating), then all
    # else has >= 2. u4 rates a only: u4 goes, then a still has 3.
    rows = [(u, i, "2016-01-01") for u in ("u1", "u2", "u3") for i in ("a", "b")]
    rows += [("u3", "c", "2016-01-02"), ("u4", "a", "2016-01-03")]
    out, counts = kcore_filter(frame(rows), k=2)
    assert sorted(set(out["item_id"])) == ["a", "b"]
    assert sorted(set(out["user_id"])) == ["u1", "u2", "u3"]
    assert counts["user_k"] == counts["item_k"] == 2
    assert counts["iterations"] == 2


def test_kcore_chain_needs_several_iterations():
    # a path u0-i0-u1-i1-...: with k=2 every removal exposes the next node, one per side per pass.
    rows = [("u0", "i0", "2016-01-01")]
    for n in range(1, 6):
        rows += [(f"u{n}", f"i{n - 1}", "2016-01-01"), (f"u{n}", f"i{n}", "2016-01-01")]
    rows += [(u, i, "2016-01-01") for u in ("v1", "v2") for i in ("j1", "j2")]  # a 2-core block survives
    out, counts = kcore_filter(frame(rows), k=2)
    assert sorted(set(out["user_id"])) == ["v1", "v2"]
    assert counts["iterations"] > 3


def test_kcore_separate_user_and_item_bounds():
    rows = [(u, "popular", "2016-01-01") for u in ("u1", "u2", "u3")] + [("u1", "rare", "2016-01-01")]
    out, _ = kcore_filter(frame(rows), k=5, user_k=1, item_k=3)
    assert out["item_id"].tolist() == ["popular"] * 3
    out, _ = kcore_filter(frame(rows), k=1, user_k=2)
    assert out["user_id"].tolist() == ["u1", "u1"]


def test_kcore_empty_result_names_stage():
    rows = [("u1", "a", "2016-01-01"), ("u2", "b", "2016-01-01")]
    with pytest.raises(EmptyStageError, match=r"'kcore'.*2 interactions, 2 users, 2 items.*preprocessing.k"):
        kcore_filter(frame(rows), k=2)


# ------------------------------------------------------------------------------------- items, statistics
def test_select_items_keeps_metadata_of_surviving_items():
    kept = frame(
        [("u1", "no_text", "2016-01-01"), ("u2", "full", "2016-01-01"), ("u3", "full", "2016-01-02")]
    )
    out = select_items(kept, COMPLETE_ITEMS)
    assert out["item_id"].tolist() == ["full", "no_text"]  # items order
    assert list(out.columns) == list(COMPLETE_ITEMS.columns)
    with pytest.raises(ValueError, match="no metadata"):
        select_items(frame([("u", "ghost", "2016-01-01")]), COMPLETE_ITEMS)


def test_dataset_statistics_table_and_funnel():
    raw = frame(
        [(f"u{u}", f"i{i}", f"2016-0{1 + (u + i) % 9}-01") for u in range(4) for i in range(3)]
        + [("u9", "i0", "2019-01-01")]
    )
    windowed, c1 = filter_date_window(raw, WINDOW)
    cats, c2 = filter_categories(windowed, items_frame({}), None)
    dedup, c3 = deduplicate_interactions(cats, "first")
    complete, c4 = filter_multimodal_completeness(
        dedup, items_frame({f"i{i}": ("t", ["c"]) for i in range(3)}), IMAGES, ["text"]
    )
    candidates, c5 = kcore_filter(complete, k=3)
    kcore, c6 = filter_verified_images(candidates, IMAGES, ["text"], k=3)
    stats, table = build_dataset_statistics(c1, c2, c3, c4, c5, c6, kcore, "Toy")
    assert stats["table1"] == {
        "users": 4,
        "items": 3,
        "avg_actions_per_user": 3.0,
        "avg_actions_per_item": 4.0,
        "interactions": 12,
        "density": 1.0,
    }
    assert stats["input"] == {"interactions": 13, "users": 5, "items": 3}
    assert [f["stage"] for f in stats["funnel"]] == [
        "date_window",
        "category",
        "dedup",
        "completeness",
        "kcore",
        "images",
    ]
    assert stats["funnel"][0]["removed_interactions"] == 1
    assert stats["first_interaction"].startswith("2016-01-01")
    assert "| #Users | 4 |" in table
    assert "| #Avg. Actions/Item | 4.0 |" in table
    assert "| #Interactions | 12 |" in table
    assert "| date_window | 12 | 4 | 3 | 1 |" in table
    assert "## Category labels" not in table  # no ingestion report: no section
    labels = {"kept_distinct": 2, "dropped": {"sentence": 6}, "dropped_examples": {"No fees.": 6}}
    report = {"files": {"metadata": {"labels": labels}}}
    stats, table = build_dataset_statistics(c1, c2, c3, c4, c5, c6, kcore, "Toy", report)
    assert stats["category_labels"] == labels
    assert "2 distinct labels kept" in table and "| sentence | 6 |" in table and "'No fees.' (6)" in table


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "007"]), st.sampled_from(["i1", "i2", "0001"]), st.integers(0, 3)
        ),
        max_size=30,
    ),
    keep=st.sampled_from(["first", "last", "all"]),
)
def test_dedup_matches_pandas_duplicated_in_time_order(rows, keep):
    df = pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "rating": np.float32(1),
            "timestamp": pd.to_datetime([d for _, _, d in rows], unit="D", utc=True),
        }
    )
    if not len(df):
        return
    out, report = deduplicate_interactions(df, keep)
    order = np.lexsort((np.arange(len(df)), np.asarray(df["timestamp"].values).view("int64")))
    in_time = df.iloc[order]
    assert report["duplicate_rows"] == int(in_time.duplicated(["user_id", "item_id"]).sum())
    expected = (
        df
        if keep == "all"
        else df.iloc[np.sort(order[~in_time.duplicated(["user_id", "item_id"], keep=keep).to_numpy()])]
    )
    pd.testing.assert_frame_equal(out, expected.reset_index(drop=True))


def test_category_filter_matches_every_unicode_form_of_a_label():
    """``Café Wear`` composed (NFC) on one item and decomposed (NFD) on another: a filter on either form keeps
    both (it kept 0 of 48 items of the other form before labels were normalised)."""
    import unicodedata

    nfc, nfd = "Café Wear", unicodedata.normalize("NFD", "Café Wear")
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "categories": [["A", nfc], ["A", nfd], ["A", "Other"]]})
    interactions = frame([("u1", "x", "2016-05-01"), ("u2", "y", "2016-05-01"), ("u3", "z", "2016-05-01")])
    for wanted in (nfc, nfd):
        out, _ = filter_categories(interactions, items, [wanted])
        assert out["item_id"].tolist() == ["x", "y"]
