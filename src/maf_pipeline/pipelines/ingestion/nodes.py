"""Nodes of the ingestion pipeline: raw Amazon reviews and metadata (2014, 2018, 2023; gzip or not) to tables.

Both readers stream the file in blocks (see ``stream.py``): memory holds a few blocks plus the kept columns,
the date window is applied while reading, and bad lines are skipped, counted and reported with line numbers.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Imported at run time (no torch: SafetensorsDataset is lazy) so Kedro can resolve the node type hints.
from maf_pipeline.datasets.raw_file import RawSource
from maf_pipeline.progress import progress

from .cleaning import (
    clean_path,
    clean_text,
    first_non_empty_list,
    full_size_urls,
    join_list,
    join_text,
    most_specific_path,
)
from .formats import (
    METADATA_ID,
    METADATA_SCHEMAS,
    REVIEW_FORMATS,
    ReviewFormat,
    detect_format,
    resolve_format,
)
from .stream import Block, BlockParser, BlockReader, IngestionError, ParseStats, Piece, first_records

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "format": "auto",
    "max_bad_fraction": 0.01,
    "block_size_mb": 8,
    "parse_threads": 2,
    "detect_lines": 20,
    "first_bad_lines": 10,
    "metadata": {"upgrade_thumbnails": True, "main_category_fallback": False, "include_features": False},
}
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000}
_INT64_MAX = np.iinfo(np.int64).max
INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.timestamp("ns", tz="UTC")),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("image_urls", pa.list_(pa.string())),
        ("brand", pa.string()),
    ]
)


def ingest_reviews(
    raw_reviews: RawSource, params: dict[str, Any], date_window: dict[str, Any] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stream a reviews file into ``interactions`` (user_id, item_id, rating float32, timestamp UTC).

    Rows keep file order; rows outside the inclusive ``date_window`` are dropped while reading. Returns the
    table and the file's report.
    """
    cfg = _settings(params)
    lo, hi = window_bounds(date_window)
    stats = ParseStats(max_examples=cfg["first_bad_lines"])
    tables: list[pa.Table] = []
    outside = 0
    with _RawFile(raw_reviews, cfg, "reviews") as raw:
        fmt = REVIEW_FORMATS[raw.format]
        parser = BlockParser(fmt.schema, stats, threads=int(cfg["parse_threads"]))
        for piece in raw.pieces(parser):
            table, n_outside = _review_rows(piece, fmt, lo, hi, stats)
            outside += n_outside
            if table.num_rows:
                tables.append(table)
    interactions = pa.concat_tables(tables) if tables else INTERACTIONS_SCHEMA.empty_table()
    report = raw.finish(
        stats,
        kept=interactions.num_rows,
        outside_window=outside,
        date_window={"start": _iso(lo), "end_exclusive": _iso(hi)},
    )
    return interactions.to_pandas(), report


def ingest_metadata(raw_metadata: RawSource, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stream a metadata file into ``items`` (item_id, title, text, categories, image_urls, brand).

    One row per item: an asin on several lines keeps its most complete record (most non-empty fields, then
    the first line). Text fields lose their HTML, categories are a cleaned label path, image URLs full size.
    """
    cfg = _settings(params)
    meta_cfg = {**DEFAULTS["metadata"], **(cfg.get("metadata") or {})}
    stats = ParseStats(max_examples=cfg["first_bad_lines"])
    tables: list[pa.Table] = []
    rows = 0
    with _RawFile(raw_metadata, cfg, "metadata") as raw:
        parser = BlockParser(
            METADATA_SCHEMAS[raw.format],
            stats,
            allow_literals=raw.format == "2014",
            arrow_first=not raw.python_literals,
            threads=int(cfg["parse_threads"]),
        )
        categories_cache: dict[tuple, list[str]] = {}
        for piece in raw.pieces(parser):
            table = _metadata_rows(piece, raw.format, meta_cfg, stats, rows, categories_cache)
            rows += table.num_rows
            if table.num_rows:
                tables.append(table)
    items = _collapse_duplicates(pa.concat_tables(tables)) if tables else ITEMS_SCHEMA.empty_table()
    report = raw.finish(
        stats,
        kept=items.num_rows,
        records=rows,
        duplicates_collapsed=rows - items.num_rows,
        items_with={
            "text": _count(pc.not_equal(items["text"], "")),
            "categories": _count(pc.greater(pc.list_value_length(items["categories"]), 0)),
            "image_urls": _count(pc.greater(pc.list_value_length(items["image_urls"]), 0)),
            "brand": _count(pc.not_equal(items["brand"], "")),
        },
    )
    return items.to_pandas(), report


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
    cfg = {**DEFAULTS, **(params or {})}
    if not 0 <= float(cfg["max_bad_fraction"]) <= 1:
        raise ValueError(f"ingestion.max_bad_fraction must be within [0, 1], got {cfg['max_bad_fraction']}")
    return cfg


def _mb(value: float) -> int:
    return int(float(value) * (1 << 20))


def _count(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _present(ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Non-null, non-empty string."""
    return pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False)


def _flag_rows(piece: Piece, ok: pa.Array, reason: str, stats: ParseStats) -> None:
    """Count the rows where ``ok`` is false as bad lines of ``reason`` (line numbers while still wanted)."""
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad):
        numbers = piece.line_numbers()[bad[: stats.max_examples]] if stats.wants_examples else []
        stats.bad(reason, numbers, count=len(bad))


def _review_rows(
    piece: Piece, fmt: ReviewFormat, lo: int | None, hi: int | None, stats: ParseStats
) -> tuple[pa.Table, int]:
    """Validate one parsed piece and apply the window; return contract columns and the count outside it."""
    table = piece.table
    user, item, rating, stamp = (table.column(k) for k in fmt.keys)
    complete = pc.and_(
        pc.and_(_present(user), _present(item)), pc.and_(pc.is_valid(rating), pc.is_valid(stamp))
    ).combine_chunks()
    _flag_rows(piece, complete, "missing_field", stats)
    per_unit = _NS_PER_UNIT[fmt.time_unit]
    limit = _INT64_MAX // per_unit
    in_range = pc.fill_null(pc.and_(pc.greater_equal(stamp, -limit), pc.less_equal(stamp, limit)), False)
    _flag_rows(piece, pc.or_(pc.invert(complete), in_range).combine_chunks(), "bad_value", stats)
    valid = pc.and_(complete, in_range)
    keep = valid
    if lo is not None:
        # ceil: the first time unit at or after the start
        keep = pc.and_(keep, pc.greater_equal(stamp, -(-lo // per_unit)))
    if hi is not None:
        keep = pc.and_(keep, pc.less(stamp, -(-hi // per_unit)))
    outside = _count(valid) - _count(keep)
    kept = table.filter(keep)
    nanoseconds = pc.multiply(kept.column(fmt.time), per_unit)
    out = pa.Table.from_arrays(
        [
            kept.column(fmt.user),
            kept.column(fmt.item),
            pc.cast(kept.column(fmt.rating), pa.float32()),
            pc.cast(nanoseconds, pa.timestamp("ns", tz="UTC")),
        ],
        schema=INTERACTIONS_SCHEMA,
    )
    return out, outside


def _metadata_rows(
    piece: Piece,
    fmt: str,
    cfg: dict[str, Any],
    stats: ParseStats,
    row_offset: int,
    categories_cache: dict[tuple, list[str]],
) -> pa.Table:
    """Map one parsed piece of any metadata format onto the clean item columns (plus a completeness score)."""
    table = piece.table
    has_id = _present(table.column(METADATA_ID[fmt])).combine_chunks()
    _flag_rows(piece, has_id, "missing_field", stats)
    table = table.filter(has_id)
    features = None
    main_category = None
    if fmt == "2018":
        description = join_list(table["description"])
        features = join_list(table["feature"])
        raw_categories = table["category"].to_pylist()
        images = first_non_empty_list(table["imageURLHighRes"], table["imageURL"], table["image"])
        brand = table["brand"]
        main_category = table["main_cat"]
    elif fmt == "2014":
        description = table["description"]
        raw_categories = [most_specific_path(paths) for paths in table["categories"].to_pylist()]
        images = pa.array([[u] if u else [] for u in table["imUrl"].to_pylist()], type=pa.list_(pa.string()))
        brand = table["brand"]
    else:  # 2023
        description = join_list(table["description"])
        features = join_list(table["features"])
        raw_categories = table["categories"].to_pylist()
        images = pa.array(
            [
                [img.get("hi_res") or img.get("large") or img.get("thumb") for img in row or () if img]
                for row in table["images"].to_pylist()
            ],
            type=pa.list_(pa.string()),
        )
        brand = table["store"]
        main_category = table["main_category"]

    title = clean_text(table["title"])
    description = clean_text(description)
    parts = [title, description]
    if cfg["include_features"] and features is not None:
        parts.append(clean_text(features))
    text = join_text(parts)
    mains = main_category.to_pylist() if main_category is not None else None
    categories = []
    for i, labels in enumerate(raw_categories):
        key = tuple(labels or ())
        path = categories_cache.get(key)
        if path is None:
            if len(categories_cache) > 100_000:
                categories_cache.clear()
            path = categories_cache[key] = clean_path(key)
        if not path and cfg["main_category_fallback"] and mains and mains[i]:
            path = clean_path([mains[i]])
        categories.append(path)
    categories = pa.array(categories, type=pa.list_(pa.string()))
    image_urls = full_size_urls(images, bool(cfg["upgrade_thumbnails"]))
    brand = clean_text(brand)
    score = functools.reduce(
        pc.add,
        [
            pc.cast(mask, pa.int8())
            for mask in (
                pc.not_equal(title, ""),
                pc.not_equal(description, ""),
                pc.greater(pc.list_value_length(categories), 0),
                pc.greater(pc.list_value_length(image_urls), 0),
                pc.not_equal(brand, ""),
            )
        ],
    )
    return pa.table(
        {
            "item_id": table.column(METADATA_ID[fmt]),
            "title": title,
            "text": text,
            "categories": categories,
            "image_urls": image_urls,
            "brand": brand,
            "_score": score,
            "_row": pa.array(np.arange(row_offset, row_offset + table.num_rows, dtype=np.int64)),
        }
    )


def _collapse_duplicates(table: pa.Table) -> pa.Table:
    """One row per item_id: highest completeness score, earliest line among equals; file order is kept."""
    order = pc.sort_indices(
        table, sort_keys=[("item_id", "ascending"), ("_score", "descending"), ("_row", "ascending")]
    ).to_numpy()
    ids = table["item_id"].take(pa.array(order)).combine_chunks()
    first = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    winners = np.sort(order[first])
    return table.take(pa.array(winners)).select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA)


class _RawFile:
    """One raw file being read: block stream, detected format, progress bar, timing and the final report."""

    def __init__(self, source: RawSource, cfg: dict[str, Any], kind: str) -> None:
        self.source = source
        self.cfg = cfg
        self.kind = kind
        self.reader = BlockReader(source, _mb(cfg["block_size_mb"]))
        self.format = ""
        self.detected = ""
        self.python_literals = False
        self._first: Block | None = None
        self._started = 0.0

    def __enter__(self) -> _RawFile:
        self._started = time.perf_counter()
        self.reader.__enter__()
        try:
            self._blocks = iter(self.reader)
            self._first = next(self._blocks, None)
            name = self.source.name
            if self._first is None:
                raise IngestionError(f"{name}: the file is empty")
            detect_lines = int(self.cfg["detect_lines"])
            records, tried, self.python_literals = first_records(self._first.data, detect_lines)
            if tried == 0:
                raise IngestionError(f"{name}: the file is empty (only blank lines at its start)")
            forced = str(self.cfg["format"]) != "auto"
            if not forced:
                self.detected = detect_format(records, self.kind, self.python_literals, name, tried)
            self.format = resolve_format(self.cfg["format"], self.detected, name)
        except BaseException:
            self.reader.__exit__(None, None, None)
            raise
        logger.info(
            "Reading %s %s (format %s%s)", self.kind, name, self.format, "" if self.detected else ", forced"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.__exit__(*exc)

    def pieces(self, parser: BlockParser) -> Iterator[Piece]:
        """Parse every block in file order."""
        total = None
        try:
            fs = fsspec.filesystem(self.source.protocol, **dict(self.source.storage_options))
            total = fs.size(self.source.path)
        except (OSError, NotImplementedError, ValueError):
            pass
        done = 0
        with progress(total=total, unit="B", unit_scale=True, desc=self.source.name) as bar:
            first, self._first = self._first, None
            blocks = self._blocks if first is None else _chain(first, self._blocks)
            for block, pieces in parser.parse_all(blocks):
                yield from pieces
                bar.update(block.compressed_pos - done)
                done = block.compressed_pos

    def finish(self, stats: ParseStats, *, kept: int, **extra: Any) -> dict[str, Any]:
        """Check the bad-line share, log, and return the per-file report."""
        name = self.source.name
        seconds = time.perf_counter() - self._started
        if stats.lines == 0:
            raise IngestionError(f"{name}: the file is empty (no non-blank lines)")
        skipped = stats.skipped_total
        share = skipped / stats.lines
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(stats.skipped.items()))
        first_bad = [line for line, _ in stats.examples]
        if skipped:
            logger.warning(
                "%s: skipped %d of %d lines (%s); first bad lines: %s",
                name,
                skipped,
                stats.lines,
                reasons,
                first_bad,
            )
        limit = float(self.cfg["max_bad_fraction"])
        if share > limit:
            raise IngestionError(
                f"{name}: {skipped:,} of {stats.lines:,} lines ({share:.2%}) are unusable ({reasons}), "
                f"more than ingestion.max_bad_fraction = {limit:.2%}; first bad lines: {first_bad}"
            )
        mb = self.reader.bytes_out / 1e6
        report = {
            "file": name,
            "path": self.source.path,
            "kind": self.kind,
            "format": self.format,
            "format_detected": self.detected or None,
            "compression": self.reader.compression,
            "lines_read": stats.lines,
            "kept": kept,
            "skipped": {k: stats.skipped.get(k, 0) for k in ("malformed", "missing_field", "bad_value")},
            "skipped_share": round(share, 6),
            "first_bad_lines": [{"line": line, "reason": reason} for line, reason in stats.examples],
            **extra,
            "compressed_bytes": self.reader.bytes_in,
            "uncompressed_bytes": self.reader.bytes_out,
            "fallback_bytes": stats.fallback_bytes,
            "seconds": round(seconds, 3),
            "mb_per_s": round(mb / seconds, 1) if seconds > 0 else None,
        }
        logger.info(
            "%s: %s lines read, %s kept, %s skipped in %.1f s (%.0f MB/s uncompressed)",
            name,
            f"{stats.lines:,}",
            f"{kept:,}",
            f"{skipped:,}",
            seconds,
            report["mb_per_s"] or 0,
        )
        return report


def _chain(first: Block, rest: Iterator[Block]) -> Iterator[Block]:
    yield first
    yield from rest
