"""Helpers for the ingestion tests: tiny raw files written into tmp_path (plain or gzip), sample records."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from maf_pipeline.datasets import RawSource

# Small blocks so that even small test files cross block boundaries.
SMALL_BLOCKS = {"block_size_mb": 0.0625}
OPEN_WINDOW = {"start": None, "end": None}


def to_line(record: Any) -> str:
    """A record as one JSON line; strings are written verbatim (for malformed or literal lines)."""
    return record if isinstance(record, str) else json.dumps(record)


@pytest.fixture
def write_raw(tmp_path: Path) -> Callable[..., RawSource]:
    """Write records as JSON lines (gzip when the name ends in .gz) and return the file as a RawSource."""

    def write(
        name: str, records: Iterable[Any], newline: str = "\n", trailing_newline: bool = True
    ) -> RawSource:
        text = newline.join(to_line(r) for r in records) + (newline if trailing_newline else "")
        path = tmp_path / name
        data = text.encode("utf-8")
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
        return RawSource(str(path))

    return write


def review_2018(user: str, item: str, rating: float, stamp: int, **extra: Any) -> dict[str, Any]:
    """A review line in the 2018 format (with the fields the real files carry)."""
    return {
        "overall": rating,
        "verified": True,
        "reviewTime": "01 1, 2017",
        "reviewerID": user,
        "asin": item,
        "reviewerName": "Someone",
        "reviewText": "Fits well, nice fabric.",
        "summary": "Nice",
        "unixReviewTime": stamp,
        **extra,
    }


def review_2014(user: str, item: str, rating: float, stamp: int) -> dict[str, Any]:
    """A review line in the 2014 format (``helpful`` instead of ``verified``/``vote``)."""
    return {
        "reviewerID": user,
        "asin": item,
        "reviewerName": "Someone",
        "helpful": [0, 0],
        "reviewText": "ok",
        "overall": rating,
        "summary": "ok",
        "unixReviewTime": stamp,
        "reviewTime": "01 1, 2014",
    }


def review_2023(user: str, item: str, rating: float, stamp_ms: int) -> dict[str, Any]:
    """A review line in the 2023 format (timestamps in milliseconds, items by ``parent_asin``)."""
    return {
        "rating": rating,
        "title": "Great",
        "text": "Love it",
        "images": [{"small_image_url": "https://x/y.jpg"}],
        "asin": item + "-child",
        "parent_asin": item,
        "user_id": user,
        "timestamp": stamp_ms,
        "helpful_vote": 0,
        "verified_purchase": True,
    }
