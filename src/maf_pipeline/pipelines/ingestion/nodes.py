"""Nodes of the ingestion pipeline: raw Amazon reviews and metadata (2014, 2018, 2023; gzip or not) to tables.

Both readers stream the file in blocks (``reader.py`` over ``stream.py``): memory holds a few blocks plus the
kept columns, the date window is applied while reading, and bad lines are skipped, counted and reported with
line numbers. ``rows.py`` maps the parsed pieces onto the contract columns.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Imported at run time (no torch: SafetensorsDataset is lazy) so Kedro can resolve the node type hints.
from maf_pipeline.datasets.raw_file import RawSource
from maf_pipeline.parameters import filled

from .formats import METADATA_ID, METADATA_SCHEMAS, REVIEW_FORMATS, ReviewFormat
from .reader import RawFile
from .rows import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    collapse_duplicates,
    count_true,
    metadata_rows,
    review_rows,
)
from .stream import BlockParser, ParseStats

logger = logging.getLogger(__name__)


def ingest_reviews(
    raw_reviews: RawSource, params: dict[str, Any], date_window: dict[str, Any] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stream a reviews file into ``interactions`` (user_id, item_id, rating float32, timestamp UTC).

    Rows keep file order; rows outside the inclusive ``date_window`` are dropped while reading. Returns the
    table and the file's report. A RecBole ``.inter`` file (the pre-split benchmark files included) is read
    by the interaction-only reader with ``ingestion.interaction_only``, so an environment can point
    ``raw_reviews`` at one and run the usual pipelines.
    """
    cfg = _settings(params)
    if is_atomic_file(raw_reviews, ".inter"):
        from .interaction_formats import ingest_interaction_files

        interactions, _, report = ingest_interaction_files(raw_reviews, cfg["interaction_only"], date_window)
        return interactions, report
    lo, hi = window_bounds(date_window)
    stats = ParseStats(max_examples=cfg["first_bad_lines"])
    tables: list[pa.Table] = []
    outside = 0
    with RawFile(raw_reviews, cfg, "reviews") as raw:
        fmt = REVIEW_FORMATS[raw.format]
        if cfg["timestamp_unit"] is not None:
            fmt = dataclasses.replace(fmt, time_unit=cfg["timestamp_unit"])
        parser = BlockParser(
            fmt.schema,
            stats,
            threads=int(cfg["parse_threads"]),
            id_fields=(fmt.user, fmt.item),
            invalid_utf8=cfg["invalid_utf8"],
        )
        for piece in raw.pieces(parser):
            table, n_outside = review_rows(piece, fmt, lo, hi, stats)
            outside += n_outside
            if table.num_rows:
                tables.append(table)
    interactions = pa.concat_tables(tables) if tables else INTERACTIONS_SCHEMA.empty_table()
    report = raw.finish(
        stats,
        hint=timestamp_hint(stats, fmt),
        kept=interactions.num_rows,
        timestamp_unit=fmt.time_unit,
        outside_window=outside,
        date_window={"start": _iso(lo), "end_exclusive": _iso(hi)},
    )
    return interactions.to_pandas(self_destruct=True, split_blocks=True), report


def ingest_metadata(
    raw_metadata: RawSource, params: dict[str, Any], interactions: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stream a metadata file into ``items`` (item_id, title, text, categories, image_urls, brand).

    Only the items reviewed in ``interactions`` are kept (a semi-join while streaming, before any cleaning:
    memory and time follow the reviewed items, not the dump, of which most items are never reviewed in the
    window); ``None`` keeps every item. One row per item: an asin on several lines keeps its most complete
    record (most non-empty fields, then the first line). Text fields lose their HTML, categories are a
    cleaned label path, image URLs full size. A RecBole item file (``.item``, or the benchmark ``.text``:
    ``item_id:token  text:token_seq``) is read by the interaction-only reader's item parser instead.
    """
    cfg = _settings(params)
    if is_atomic_file(raw_metadata, ".item", ".text"):
        from .interaction_formats import read_item_file

        wanted_ids = None if interactions is None else sorted(reviewed_item_ids(interactions))
        return read_item_file(raw_metadata, cfg["interaction_only"], wanted_ids)
    meta_cfg = cfg["metadata"]
    wanted = None if interactions is None else reviewed_item_ids(interactions)
    stats = ParseStats(max_examples=cfg["first_bad_lines"])
    tables: list[pa.Table] = []
    rows = not_reviewed = 0
    with RawFile(raw_metadata, cfg, "metadata") as raw:
        parser = BlockParser(
            METADATA_SCHEMAS[raw.format],
            stats,
            allow_literals=raw.format == "2014",
            arrow_first=not raw.python_literals,
            threads=int(cfg["parse_threads"]),
            id_fields=(METADATA_ID[raw.format],),
            invalid_utf8=cfg["invalid_utf8"],
        )
        categories_cache: dict[tuple, tuple[list[str], list[tuple[str, str]]]] = {}
        for piece in raw.pieces(parser):
            table, skipped = metadata_rows(piece, raw.format, meta_cfg, stats, rows, categories_cache, wanted)
            rows += table.num_rows
            not_reviewed += skipped
            if table.num_rows:
                tables.append(table)
    items = collapse_duplicates(pa.concat_tables(tables)) if tables else ITEMS_SCHEMA.empty_table()
    del tables  # the pieces; with no duplicates ``items`` shares their buffers
    report = raw.finish(
        stats,
        kept=items.num_rows,
        records=rows,
        duplicates_collapsed=rows - items.num_rows,
        semi_join={
            "reviewed_items": None if wanted is None else len(wanted),
            "records_of_unreviewed_items": not_reviewed,
        },
        capped=dict(stats.capped),
        labels=label_report(items, stats),
        items_with={
            "text": count_true(pc.not_equal(items["text"], "")),
            "categories": count_true(pc.greater(pc.list_value_length(items["categories"]), 0)),
            "image_urls": count_true(pc.greater(pc.list_value_length(items["image_urls"]), 0)),
            "brand": count_true(pc.not_equal(items["brand"], "")),
        },
    )
    # self_destruct: each Arrow column is freed once converted (a peak of one copy, not two)
    return items.to_pandas(self_destruct=True, split_blocks=True), report


def label_report(items: pa.Table, stats: ParseStats) -> dict[str, Any]:
    """Distinct category labels kept, label occurrences dropped as not categories (by reason), examples."""
    kept = pc.unique(pc.list_flatten(items["categories"])) if items.num_rows else []
    return {
        "kept_distinct": len(kept),
        "dropped": dict(stats.labels_dropped),
        "dropped_examples": dict(list(stats.dropped_label_examples.items())[:20]),
    }


def is_atomic_file(source: RawSource, *suffixes: str) -> bool:
    """Whether the file name ends in one of ``suffixes`` (optionally followed by ``.gz``)."""
    name = source.name.removesuffix(".gz")
    return name.endswith(suffixes)


def reviewed_item_ids(interactions: pd.DataFrame) -> frozenset[str]:
    """The distinct item ids of ``interactions`` (the semi-join's value set)."""
    return frozenset(interactions["item_id"].astype(str).unique())


def build_ingestion_report(
    reviews_report: dict[str, Any],
    metadata_report: dict[str, Any],
    interactions: pd.DataFrame,
    items: pd.DataFrame,
) -> dict[str, Any]:
    """Merge the per-file reports and count the reviewed items that have metadata (a wrong pairing shows)."""
    reviewed = pd.Index(interactions["item_id"].unique())
    with_meta = int(reviewed.isin(items["item_id"]).sum())
    summary = {
        "interactions": len(interactions),
        "users": int(interactions["user_id"].nunique()),
        "reviewed_items": len(reviewed),
        "metadata_items": len(items),
        "reviewed_items_with_metadata": with_meta,
        "reviewed_items_with_metadata_share": round(with_meta / len(reviewed), 4) if len(reviewed) else None,
    }
    if len(reviewed) and with_meta < len(reviewed):
        logger.info(
            "%d of %d reviewed items have no metadata record", len(reviewed) - with_meta, len(reviewed)
        )
    return {"files": {"reviews": reviews_report, "metadata": metadata_report}, "summary": summary}


def timestamp_hint(stats: ParseStats, fmt: ReviewFormat) -> str:
    """Why the timestamps were unusable, when their values say it: milliseconds read as seconds."""
    values = [v for v in stats.field_values.get(fmt.time, []) if isinstance(v, int | float)]
    if fmt.time_unit == "s" and values and all(1e11 <= abs(v) < 1e14 for v in values):
        example = pd.Timestamp(int(values[0]), unit="ms", tz="UTC").date()
        return (
            f"the {fmt.time} values look like milliseconds since the epoch (e.g. {int(values[0])} = "
            f"{example} in ms), but format {fmt.name} counts seconds: set ingestion.timestamp_unit: ms"
        )
    return ""


def window_bounds(date_window: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """The window as (start inclusive, end exclusive) in ns since the epoch, UTC; ``None`` for an open side.

    An end given as a date (or at midnight) includes that whole day, so {start: 2016-01-01, end: 2017-12-31}
    keeps every review of 2016 and 2017.
    """
    date_window = date_window or {}
    start, end = date_window.get("start"), date_window.get("end")
    lo = _utc(start).value if start not in (None, "") else None
    hi = None
    if end not in (None, ""):
        stamp = _utc(end)
        hi = (stamp + pd.Timedelta(days=1)).value if stamp == stamp.normalize() else stamp.value + 1
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"date_window is empty: start {start} is after end {end}")
    return lo, hi


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _iso(ns: int | None) -> str | None:
    return None if ns is None else pd.Timestamp(ns, tz="UTC").isoformat()


def _settings(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params:ingestion`` checked and complete (the schema's defaults: a Kedro run's block is already; a
    benchmark or notebook calling the reader may pass only what it changes)."""
    return filled("ingestion", params)
