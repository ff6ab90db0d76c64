"""Property-based test of the image order: completeness and k-core on cheap image *candidates*, images fetched
for the k-core survivors only, failures dropped and the k-core re-applied (``filter_verified_images``) give
exactly the paper's data set computed with image availability known up front, for random data and random
download failures (checked against a brute-force reference)."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from maf_pipeline.pipelines.preprocessing.nodes import (
    EmptyStageError,
    filter_multimodal_completeness,
    filter_verified_images,
    kcore_filter,
)

from .test_kcore_property import Row, naive_kcore, to_frame

ITEMS = [f"i{n}" for n in range(8)]
USERS = [f"u{n}" for n in range(7)]


def items_table(text: dict[str, bool]) -> pd.DataFrame:
    """Metadata of every item: text or not, always a category and a URL."""
    return pd.DataFrame(
        {
            "item_id": ITEMS,
            "title": "",
            "text": ["some text" if text[i] else "" for i in ITEMS],
            "categories": [["Women"] for _ in ITEMS],
            "image_urls": [["http://x/a.jpg"] for _ in ITEMS],
            "brand": "",
        }
    )


def reference(rows: list[Row], verified: set[str], text: dict[str, bool], k: int) -> list[int]:
    """The paper's definition with availability known: keep items with text and a verified image, then the
    k-core (naive one-row-at-a-time removal, an independent implementation)."""
    positions = [p for p, (_, item) in enumerate(rows) if item in verified and text[item]]
    kept = naive_kcore([rows[p] for p in positions], k, k)
    return sorted(positions[q] for q in kept)


def staged(
    rows: list[Row], candidates: set[str], verified: set[str], text: dict[str, bool], k: int
) -> tuple[list[int], set[str]]:
    """The pipeline's order; returns the kept row positions and the items whose image was acquired."""
    frame = to_frame(rows)
    items = items_table(text)
    cand = pd.DataFrame({"item_id": ITEMS, "has_image": [i in candidates for i in ITEMS]})
    try:
        complete, _ = filter_multimodal_completeness(frame, items, cand, ["image", "text", "category"])
        survivors, _ = kcore_filter(complete, k)
    except EmptyStageError:
        return [], set()
    acquired = set(survivors["item_id"])  # acquire_images runs on exactly these items
    availability = pd.DataFrame(
        {"item_id": sorted(acquired), "has_image": [i in verified for i in sorted(acquired)]}
    )
    try:
        final, report = filter_verified_images(survivors, availability, ["image", "text", "category"], k)
    except EmptyStageError:
        return [], acquired
    assert report["stage"] == "images"
    seconds = (final["timestamp"] - pd.Timestamp("2016-01-01", tz="UTC")).dt.total_seconds()
    return sorted(seconds.astype(int)), acquired


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Row], set[str], set[str], dict[str, bool], int]:
    """Random interactions, cheap candidates, and download failures among the candidates (verified is always a
    subset of the candidates: an item without a URL or file cannot get an image)."""
    rows = draw(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS)), max_size=70))
    candidates = set(draw(st.sets(st.sampled_from(ITEMS))))
    fails = set(draw(st.sets(st.sampled_from(ITEMS))))
    text = {i: draw(st.booleans()) or i == "i0" for i in ITEMS}
    return rows, candidates, candidates - fails, text, draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios())
def test_candidates_then_verified_images_equal_the_papers_data_set(scenario):
    rows, candidates, verified, text, k = scenario
    kept, acquired = staged(rows, candidates, verified, text, k)
    assert kept == reference(rows, verified, text, k)
    # only items of the candidate k-core were fetched, and every final item was among them
    assert {rows[p][1] for p in kept} <= acquired <= candidates


def test_a_failed_image_cascades_through_the_kcore():
    # u0..u2 each review i0 and i1; i1's image fails, so every user falls under k=2 and i0 goes too
    rows = [(f"u{u}", item) for u in range(3) for item in ("i0", "i1")] + [("u3", "i2"), ("u4", "i2")]
    text = dict.fromkeys(ITEMS, True)
    kept, acquired = staged(rows, {"i0", "i1", "i2"}, {"i0"}, text, 2)
    assert kept == [] and acquired == {"i0", "i1"}
    # with a third item per user the loop settles after dropping i1 only
    rows += [(f"u{u}", "i3") for u in range(3)]
    kept, acquired = staged(rows, {"i0", "i1", "i3"}, {"i0", "i3"}, text, 2)
    assert {rows[p][1] for p in kept} == {"i0", "i3"} and acquired == {"i0", "i1", "i3"}
    frame = to_frame([rows[p] for p in range(len(rows)) if rows[p][1] in ("i0", "i1", "i3")])
    availability = pd.DataFrame({"item_id": ["i0", "i1", "i3"], "has_image": [True, False, True]})
    kept_frame, report = filter_verified_images(frame, availability, ["image"], 2)
    assert set(kept_frame["item_id"]) == {"i0", "i3"}
    assert report["items_without_verified_image"] == 1 and report["rounds"] == 1
    # image not required: nothing is dropped
    same, report = filter_verified_images(frame, availability, ["text"], 2)
    assert len(same) == len(frame) and report["rounds"] == 0
