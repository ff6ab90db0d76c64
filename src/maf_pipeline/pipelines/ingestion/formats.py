"""The three public Amazon review formats (2014, 2018, 2023): the fields read from each, and detection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from .stream import IngestionError

FORMATS = ("2014", "2018", "2023")
_STR = pa.string()
_STR_LIST = pa.list_(pa.string())


@dataclass(frozen=True)
class ReviewFormat:
    """Where a review format keeps user, item, rating and time, and the unit of its timestamps."""

    name: str
    user: str
    item: str
    rating: str
    time: str
    time_unit: str  # "s" or "ms"

    @property
    def schema(self) -> pa.Schema:
        """The only fields Arrow materialises (ids as strings: all-digit asins keep their leading zeros)."""
        fields = [(self.user, _STR), (self.item, _STR), (self.rating, pa.float64()), (self.time, pa.int64())]
        return pa.schema(fields)

    @property
    def keys(self) -> tuple[str, ...]:
        """The four required keys."""
        return (self.user, self.item, self.rating, self.time)


REVIEW_FORMATS: dict[str, ReviewFormat] = {
    "2014": ReviewFormat("2014", "reviewerID", "asin", "overall", "unixReviewTime", "s"),
    "2018": ReviewFormat("2018", "reviewerID", "asin", "overall", "unixReviewTime", "s"),
    "2023": ReviewFormat("2023", "user_id", "parent_asin", "rating", "timestamp", "ms"),
}

# Metadata fields read per format; the node maps them onto the common item columns.
METADATA_SCHEMAS: dict[str, pa.Schema] = {
    "2014": pa.schema(
        [
            ("asin", _STR),
            ("title", _STR),
            ("description", _STR),
            ("categories", pa.list_(_STR_LIST)),
            ("imUrl", _STR),
            ("brand", _STR),
        ]
    ),
    "2018": pa.schema(
        [
            ("asin", _STR),
            ("title", _STR),
            ("description", _STR_LIST),
            ("feature", _STR_LIST),
            ("category", _STR_LIST),
            ("image", _STR_LIST),
            ("imageURL", _STR_LIST),
            ("imageURLHighRes", _STR_LIST),
            ("brand", _STR),
            ("main_cat", _STR),
        ]
    ),
    "2023": pa.schema(
        [
            ("parent_asin", _STR),
            ("title", _STR),
            ("description", _STR_LIST),
            ("features", _STR_LIST),
            ("categories", _STR_LIST),
            ("images", pa.list_(pa.struct([("thumb", _STR), ("large", _STR), ("hi_res", _STR)]))),
            ("store", _STR),
            ("main_category", _STR),
        ]
    ),
}
METADATA_ID = {"2014": "asin", "2018": "asin", "2023": "parent_asin"}

# Detection: a record matches a format when it has the format's id key and at least one of its telltale keys.
_REVIEW_SIGNS = {
    "2018": ("asin", {"reviewerID", "overall", "unixReviewTime", "reviewTime"}),
    "2023": ("parent_asin", {"user_id", "rating", "timestamp", "helpful_vote", "verified_purchase"}),
}
# Metadata telltales leave out keys that reviews carry too (2018 reviews have ``image``, 2023 ``images``).
_METADATA_SIGNS = {
    "2014": ("asin", {"title", "imUrl", "categories", "salesRank", "related"}),
    "2018": (
        "asin",
        {"title", "category", "main_cat", "imageURL", "imageURLHighRes", "also_buy", "tech1", "feature"},
    ),
    "2023": ("parent_asin", {"main_category", "features", "categories", "store", "rating_number"}),
}
# Keys only reviews have: a record holding one is never taken for metadata.
_REVIEW_ONLY_KEYS = {"reviewerID", "reviewText", "overall", "unixReviewTime", "user_id", "helpful_vote"}


def detect_format(
    records: Sequence[dict], kind: str, python_literals: bool, file_name: str, tried: int
) -> str:
    """Pick the format whose id and telltale keys the first records carry; else fail listing the keys seen."""
    if not records:
        raise IngestionError(
            f"{file_name}: unknown {kind} format: none of the first {tried} non-blank lines is a JSON object "
            "(or a Python dict literal)"
        )
    if kind == "metadata" and python_literals:
        return "2014"  # only the 2014 metadata dump is written as Python literals
    signs = _REVIEW_SIGNS if kind == "reviews" else _METADATA_SIGNS
    candidates = records if kind == "reviews" else [r for r in records if not _REVIEW_ONLY_KEYS & r.keys()]
    scores = {}
    for name, (id_key, telltale) in signs.items():
        matched = [r for r in candidates if id_key in r and telltale & r.keys()]
        scores[name] = (len(matched), sum(len(telltale & r.keys()) for r in matched))
    best = max(scores, key=lambda n: scores[n])
    if scores[best][0] == 0:
        seen = sorted(set().union(*(r.keys() for r in records)))
        expected = "; ".join(f"{n}: {k} + one of {sorted(t)}" for n, (k, t) in signs.items())
        note = ""
        if kind == "metadata":
            note = f", and no key of reviews ({', '.join(sorted(_REVIEW_ONLY_KEYS))})"
            review_keys = sorted(_REVIEW_ONLY_KEYS & set(seen))
            if review_keys:
                note += (
                    f". This looks like a reviews file (its records have {', '.join(review_keys)}): "
                    "check the raw_metadata catalog entry"
                )
        raise IngestionError(
            f"{file_name}: unknown {kind} format: the first {len(records)} records have keys {seen[:40]}; "
            f"expected {expected}{note}"
        )
    if kind == "reviews" and best == "2018":
        keys = set().union(*(r.keys() for r in records))
        if "helpful" in keys and not keys & {"verified", "vote", "style"}:
            return "2014"  # same fields as 2018; only the label differs
    return best


def resolve_format(requested: str | int | None, detected: str, file_name: str) -> str:
    """The format to read with: the forced one when ``requested`` is not ``auto``."""
    requested = "auto" if requested is None else str(requested)
    if requested == "auto":
        return detected
    if requested not in FORMATS:
        raise IngestionError(
            f"{file_name}: ingestion.format must be auto or one of {FORMATS}, got {requested!r}"
        )
    return requested
