"""The real Amazon 2018 Magazine Subscriptions files, checked against straightforward counts with ``json``."""

from __future__ import annotations

import gzip
import html
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maf_pipeline.datasets import RawSource
from maf_pipeline.pipelines.ingestion.nodes import ingest_metadata, ingest_reviews

SAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "amazon-2018-samples"
REVIEWS = SAMPLES / "Magazine_Subscriptions_5.json.gz"
METADATA = [
    SAMPLES / "meta_Magazine_Subscriptions.json.gz",
    SAMPLES / "meta_Magazine_Subscriptions.imageURL-variant.json.gz",
]

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/amazon-2018-samples is absent")


def _records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.parametrize(
    "window",
    [
        {"start": None, "end": None},
        {"start": "2016-01-01", "end": "2017-12-31"},
        {"start": "2010-06-15", "end": None},
    ],
)
def test_reviews_match_an_independent_count(window):
    records = _records(REVIEWS)
    start = window["start"] and datetime.fromisoformat(window["start"]).replace(tzinfo=UTC).date()
    end = window["end"] and datetime.fromisoformat(window["end"]).replace(tzinfo=UTC).date()
    expected = []
    for r in records:
        day = datetime.fromtimestamp(r["unixReviewTime"], tz=UTC).date()
        if (start is None or day >= start) and (end is None or day <= end):
            expected.append((r["reviewerID"], r["asin"], float(r["overall"]), r["unixReviewTime"]))
    frame, report = ingest_reviews(RawSource(str(REVIEWS)), {}, window)
    assert report["lines_read"] == len(records) == 2375
    assert report["kept"] == len(frame) == len(expected)
    assert report["outside_window"] == len(records) - len(expected)
    assert sum(report["skipped"].values()) == 0
    actual = list(
        zip(
            frame["user_id"],
            frame["item_id"],
            frame["rating"].astype(float),
            frame["timestamp"].astype("int64") // 10**9,
            strict=True,
        )
    )
    assert actual == expected  # same rows, same (file) order
    assert Counter(frame["user_id"]) == Counter(e[0] for e in expected)


def _full_size(url: str) -> str:
    """Drop Amazon's size directives: "I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg" -> "I/51Iph04Jy3L.jpg"."""
    folder, name = url.rsplit("/", 1)
    if "._" not in name:
        return url
    return f"{folder}/{name.split('._')[0]}.{name.rsplit('.', 1)[1]}"


@pytest.mark.parametrize("path", METADATA, ids=["image", "imageURL"])
def test_metadata_matches_an_independent_count(path):
    records = _records(path)
    by_asin: dict[str, list[dict]] = {}
    for r in records:
        by_asin.setdefault(r["asin"], []).append(r)
    items, report = ingest_metadata(RawSource(str(path)), {})
    assert report["lines_read"] == len(records) == 3385
    assert report["kept"] == len(items) == len(by_asin)
    assert report["duplicates_collapsed"] == len(records) - len(by_asin) == 1065
    assert list(items["item_id"]) == [
        a for a in dict.fromkeys(r["asin"] for r in records)
    ]  # first-seen order
    rows = items.set_index("item_id")
    checked = 0
    for asin, lines in by_asin.items():
        if len(lines) != 1:
            continue
        r = lines[0]
        labels = []
        for label in (html.unescape(c).strip() for c in r.get("category", [])):
            if label and label not in labels:
                labels.append(label)
        assert list(rows.at[asin, "categories"]) == labels, asin
        urls = [_full_size(u) for u in r.get("imageURLHighRes") or r.get("image", [])]
        assert list(rows.at[asin, "image_urls"]) == urls, asin
        assert rows.at[asin, "brand"] == html.unescape(r.get("brand", "")).strip()
        checked += 1
    assert checked > 1000
    for asin, lines in by_asin.items():  # a collapsed item keeps one of its own records' category paths
        if len(lines) > 1:
            options = [[html.unescape(c) for c in r.get("category", []) if c.strip()] for r in lines]
            assert list(rows.at[asin, "categories"]) in options
    assert not items["title"].str.contains("<span", regex=False).any()
    assert not items["text"].str.contains("<", regex=False).any()


def test_both_metadata_variants_give_the_same_items():
    first, _ = ingest_metadata(RawSource(str(METADATA[0])), {})
    second, _ = ingest_metadata(RawSource(str(METADATA[1])), {})
    assert first.equals(second)
