"""Acceptance: ingestion + preprocessing (+ sequences) on the real 2018 Magazine Subscriptions files, both
metadata variants, checked against an independent count written here with the plain json module."""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import html
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from maf_pipeline.datasets import RawSource
from maf_pipeline.pipelines.preprocessing.nodes import (
    build_dataset_statistics,
    deduplicate_interactions,
    filter_categories,
    filter_date_window,
    filter_multimodal_completeness,
    filter_verified_images,
    kcore_filter,
    select_items,
)
from maf_pipeline.pipelines.sequences.nodes import build_id_maps, build_sequences

ingestion = pytest.importorskip("maf_pipeline.pipelines.ingestion.nodes")

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "amazon-2018-samples"
REVIEWS = SHARED / "Magazine_Subscriptions_5.json.gz"
METADATA = {
    "image": SHARED / "meta_Magazine_Subscriptions.json.gz",
    "imageURL": SHARED / "meta_Magazine_Subscriptions.imageURL-variant.json.gz",
}
pytestmark = pytest.mark.skipif(not REVIEWS.exists(), reason="../shared Amazon 2018 samples are absent")

SETTINGS = {
    # the paper's 2016-2017 window; a 2-core keeps something of this small 5-core file
    "window_2016_2017": dict(
        window={"start": "2016-01-01", "end": "2017-12-31"}, labels=None, modalities=["text"], k=2
    ),
    # no window, the default 5-core, text and category required
    "all_time_5core": dict(window=None, labels=None, modalities=["text", "category"], k=5),
    # a category subset; "Health, Fitness &amp; Wellness" is spelled with an entity on some lines
    "women_or_health": dict(
        window=None, labels=["women", "Health, Fitness & Wellness"], modalities=["text", "category"], k=2
    ),
}


# ------------------------------------------------------------------------------------- independent count
_TAG = re.compile(r"<[A-Za-z/!][^>]*>?")  # a tag, or a tag cut off at the end of the string


def visible(text: Any) -> str:
    """What is left of a metadata string once HTML tags and entities are gone."""
    return _TAG.sub(" ", html.unescape(_TAG.sub(" ", str(text or "")))).strip()


def norm(label: str) -> str:
    """A category label as the filter compares it."""
    return html.unescape(label).strip().casefold()


@cache
def raw_reviews() -> list[tuple[int, str, str, int]]:
    """(line, user, item, unix time) of every review line."""
    with gzip.open(REVIEWS, "rt", encoding="utf-8") as f:
        return [
            (n, r["reviewerID"], r["asin"], int(r["unixReviewTime"]))
            for n, r in enumerate(json.loads(line) for line in f if line.strip())
        ]


@cache
def raw_metadata(variant: str) -> dict[str, dict]:
    """The metadata record per asin (repeated lines are checked to agree on the fields used here)."""
    out: dict[str, dict] = {}
    with gzip.open(METADATA[variant], "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            fields = {k: record.get(k) for k in ("title", "description", "category")}
            assert out.setdefault(record["asin"], fields) == fields, record["asin"]
    return out


def counts(rows: list[tuple]) -> dict[str, int]:
    """Interactions, users, items of (line, user, item, time) rows."""
    return {"interactions": len(rows), "users": len({r[1] for r in rows}), "items": len({r[2] for r in rows})}


def independent_count(
    variant: str, window: dict | None, labels: list | None, modalities: list, k: int
) -> dict:
    """The whole filter chain over plain Python lists: counts after each stage and the final rows."""
    rows = raw_reviews()
    meta = raw_metadata(variant)
    if window:
        lo = calendar.timegm(dt.date.fromisoformat(window["start"]).timetuple())
        hi = calendar.timegm(dt.date.fromisoformat(window["end"]).timetuple()) + 24 * 3600
        rows = [r for r in rows if lo <= r[3] < hi]
    stages = {"date_window": counts(rows)}
    if labels:
        wanted = {norm(label) for label in labels}
        rows = [r for r in rows if r[2] in meta and wanted & {norm(c) for c in meta[r[2]]["category"] or []}]
    stages["category"] = counts(rows)
    first: dict[tuple[str, str], tuple] = {}
    for r in sorted(rows, key=lambda r: (r[3], r[0])):
        first.setdefault((r[1], r[2]), r)
    rows = sorted(first.values())
    stages["dedup"] = counts(rows)

    def complete(item: str) -> bool:
        m = meta.get(item)
        if m is None:
            return False
        ok = True
        if "text" in modalities:
            ok &= any(visible(t) for t in [m["title"], *(m["description"] or [])])
        if "category" in modalities:
            ok &= any(html.unescape(c).strip() for c in m["category"] or [])
        return ok

    rows = [r for r in rows if complete(r[2])]
    stages["completeness"] = counts(rows)
    while True:
        users, items = Counter(r[1] for r in rows), Counter(r[2] for r in rows)
        kept = [r for r in rows if users[r[1]] >= k and items[r[2]] >= k]
        if len(kept) == len(rows):
            break
        rows = kept
    stages["kcore"] = counts(rows)
    stages["images"] = counts(rows)  # no image required: the verified-image stage keeps everything
    return {"stages": stages, "rows": rows}


# ----------------------------------------------------------------------------------- the project's nodes
@cache
def ingested(variant: str, window_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions and items as the ingestion nodes produce them (once per metadata variant and window)."""
    window = SETTINGS[window_key]["window"]
    interactions, _ = ingestion.ingest_reviews(RawSource(str(REVIEWS)), {}, window)
    # the semi-join against the reviewed items, as in the pipeline
    items, _ = ingestion.ingest_metadata(RawSource(str(METADATA[variant])), {}, interactions)
    return interactions, items


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", list(METADATA))
def test_magazine_statistics_match_an_independent_count(variant, setting):
    s = SETTINGS[setting]
    interactions, items = ingested(variant, setting)
    no_images = pd.DataFrame({"item_id": pd.Series([], dtype=str), "has_image": pd.Series([], dtype=bool)})

    windowed, c_window = filter_date_window(interactions, s["window"])
    categorised, c_category = filter_categories(windowed, items, s["labels"])
    dedup, c_dedup = deduplicate_interactions(categorised, "first")
    complete, c_complete = filter_multimodal_completeness(dedup, items, no_images, s["modalities"])
    candidates, c_kcore = kcore_filter(complete, s["k"])
    kcore, c_images = filter_verified_images(candidates, no_images, s["modalities"], s["k"])
    filtered_items = select_items(kcore, items)
    stats, table = build_dataset_statistics(
        c_window, c_category, c_dedup, c_complete, c_kcore, c_images, kcore, "Magazine"
    )

    expected = independent_count(variant, s["window"], s["labels"], s["modalities"], s["k"])
    # ingestion applied the window while reading, so the window stage sees exactly the windowed reviews
    assert c_window["before"] == c_window["after"] == expected["stages"]["date_window"]
    assert {
        f["stage"]: {k: f[k] for k in ("interactions", "users", "items")} for f in stats["funnel"]
    } == expected["stages"]
    final = expected["stages"]["kcore"]
    assert final["interactions"] > 0
    assert stats["table1"]["users"] == final["users"]
    assert stats["table1"]["items"] == final["items"]
    assert stats["table1"]["interactions"] == final["interactions"]
    assert stats["table1"]["avg_actions_per_user"] == round(final["interactions"] / final["users"], 2)
    assert stats["table1"]["avg_actions_per_item"] == round(final["interactions"] / final["items"], 2)
    assert f"| #Interactions | {final['interactions']:,} |" in table
    assert sorted(zip(kcore["user_id"], kcore["item_id"], strict=True)) == sorted(
        (r[1], r[2]) for r in expected["rows"]
    )
    assert sorted(filtered_items["item_id"]) == sorted({r[2] for r in expected["rows"]})

    # sequences: the test target is each user's latest review (ties: file order), validation the one before
    item_index, user_index = build_id_maps(kcore)
    _, valid, test = build_sequences(kcore, item_index, user_index, 50)
    by_user: dict[str, list[str]] = {}
    for r in sorted(expected["rows"], key=lambda r: (r[3], r[0])):
        by_user.setdefault(r[1], []).append(r[2])
    item_of = dict(zip(item_index["item_idx"], item_index["item_id"], strict=True))
    user_of = dict(zip(user_index["user_idx"], user_index["user_id"], strict=True))
    got_test = {user_of[u]: item_of[t] for u, t in zip(test["user_idx"], test["target"], strict=True)}
    got_valid = {user_of[u]: item_of[t] for u, t in zip(valid["user_idx"], valid["target"], strict=True)}
    assert got_test == {u: seq[-1] for u, seq in by_user.items() if len(seq) >= 3}
    assert got_valid == {u: seq[-2] for u, seq in by_user.items() if len(seq) >= 3}
