"""Parsed pieces of a raw file onto the contract columns: validation, the date window, item records."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cleaning import (
    clean_path,
    clean_text,
    first_non_empty_list,
    full_size_urls,
    join_list,
    join_text,
    merge_paths,
    split_labels,
)
from .formats import METADATA_ID, ReviewFormat
from .stream import ParseStats, Piece

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


def count_true(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _present(ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Non-null, non-empty string."""
    return pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False)


def _flag_rows(piece: Piece, ok: pa.Array, reason: str, stats: ParseStats) -> None:
    """Count the rows where ``ok`` is false as bad lines of ``reason`` (line numbers when among the first)."""
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad):
        # first_line + row index is a lower bound of the first bad line number (blank lines only add)
        wanted = stats.wants_example(piece.first_line + int(bad[0]))
        numbers = piece.line_numbers()[bad[: stats.max_examples]] if wanted else []
        stats.bad(reason, numbers, count=len(bad))


def review_rows(
    piece: Piece, fmt: ReviewFormat, lo: int | None, hi: int | None, stats: ParseStats
) -> tuple[pa.Table, int]:
    """Validate one parsed piece and apply the window; return contract columns and the count outside it."""
    table = piece.table
    user, item, rating, stamp = (table.column(k) for k in fmt.keys)
    complete = pc.and_(
        pc.and_(_present(user), _present(item)), pc.and_(pc.is_valid(rating), pc.is_valid(stamp))
    ).combine_chunks()
    _flag_rows(piece, complete, "missing_field", stats)
    if count_true(complete) < len(complete):
        checks = zip(fmt.keys, (user, item, rating, stamp), (True, True, False, False), strict=True)
        for key, column, is_id in checks:
            ok = _present(column) if is_id else pc.is_valid(column)
            if n_missing := len(column) - count_true(ok):
                stats.bad_field("missing_field", key, n_missing)
    per_unit = _NS_PER_UNIT[fmt.time_unit]
    limit = _INT64_MAX // per_unit
    in_range = pc.fill_null(pc.and_(pc.greater_equal(stamp, -limit), pc.less_equal(stamp, limit)), False)
    usable = pc.or_(pc.invert(complete), in_range).combine_chunks()
    _flag_rows(piece, usable, "bad_value", stats)
    if n_bad := len(usable) - count_true(usable):
        stats.bad_field("bad_value", fmt.time, n_bad, stamp.filter(pc.invert(usable)).slice(0, 5).to_pylist())
    valid = pc.and_(complete, in_range)
    keep = valid
    if lo is not None:
        # ceil: the first time unit at or after the start
        keep = pc.and_(keep, pc.greater_equal(stamp, -(-lo // per_unit)))
    if hi is not None:
        keep = pc.and_(keep, pc.less(stamp, -(-hi // per_unit)))
    outside = count_true(valid) - count_true(keep)
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


def cap_text(values: pa.Array | pa.ChunkedArray, limit: int, name: str, stats: ParseStats) -> pa.Array:
    """Strings cut to ``limit`` characters before any cleaning (0 = no cut), counted per field in ``stats``:
    one 52 MB description would otherwise be cleaned, kept and tokenised whole."""
    if not limit:
        return values
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_null(values.type):
        return values
    values = values.cast(pa.string()) if values.type != pa.string() else values
    too_long = pc.greater(pc.utf8_length(values), limit)
    count = count_true(too_long)
    if count:
        stats.capped[name] += count
        values = pc.if_else(too_long, pc.utf8_slice_codeunits(values, 0, limit), values)
    return values


MAX_LISTS = {"categories": "max_category_labels", "image_urls": "max_image_urls"}


def cap_list(values: pa.Array, cfg: dict[str, Any], name: str, stats: ParseStats) -> pa.Array:
    """Lists cut to their bound (``ingestion.metadata.max_category_labels`` / ``max_image_urls``), counted."""
    limit = int(cfg.get(MAX_LISTS[name]) or 0)
    if not limit:
        return values
    too_long = pc.greater(pc.list_value_length(values), limit)
    count = count_true(too_long)
    if count:
        stats.capped[name] += count
        values = pc.list_slice(values, 0, limit)
    return values


def format_fields(table: pa.Table, fmt: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The raw description, features, category paths, image URLs, brand and main category of one piece, read
    from the columns of its format (2014, 2018 or 2023)."""
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
        keep = cfg["category_paths"]
        raw_categories = [merge_paths(paths, keep) for paths in table["categories"].to_pylist()]
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
    return {"description": description, "features": features, "categories": raw_categories, "images": images,
            "brand": brand, "main_category": main_category}  # fmt: skip


def category_paths(
    raw_categories: list[Any],
    main_category: pa.Array | None,
    cfg: dict[str, Any],
    stats: ParseStats,
    categories_cache: dict[tuple, tuple[list[str], list[tuple[str, str]]]],
) -> list[list[str]]:
    """Each item's cleaned labels, without those that are not categories (counted in ``stats``); an empty
    path takes the main category when ``main_category_fallback`` is on. Paths are cached: they repeat."""
    rule = cfg["labels"]
    mains = main_category.to_pylist() if main_category is not None else None
    categories = []
    for i, labels in enumerate(raw_categories):
        key = tuple(labels or ())
        cached = categories_cache.get(key)
        if cached is None:
            if len(categories_cache) > 100_000:
                categories_cache.clear()
            cached = categories_cache[key] = split_labels(clean_path(key), rule)
        path, dropped = cached
        for label, reason in dropped:
            stats.labels_dropped[reason] += 1
            if len(stats.dropped_label_examples) < 20 or label in stats.dropped_label_examples:
                stats.dropped_label_examples[label] = stats.dropped_label_examples.get(label, 0) + 1
        if not path and cfg["main_category_fallback"] and mains and mains[i]:
            path = clean_path([mains[i]])
        categories.append(path)
    return categories


def metadata_rows(
    piece: Piece,
    fmt: str,
    cfg: dict[str, Any],
    stats: ParseStats,
    row_offset: int,
    categories_cache: dict[tuple, tuple[list[str], list[tuple[str, str]]]],
    wanted_ids: frozenset[str] | None = None,
) -> tuple[pa.Table, int]:
    """Map one parsed piece of any metadata format onto the clean item columns (plus a completeness score).

    With ``wanted_ids`` only those items are kept (a semi-join done before any cleaning, so the cost follows
    the wanted items, not the dump); returns the table and how many valid rows the semi-join left out.
    """
    table = piece.table
    ids = table.column(METADATA_ID[fmt])
    has_id = _present(ids).combine_chunks()
    _flag_rows(piece, has_id, "missing_field", stats)
    keep = has_id
    if wanted_ids is not None:
        # a Python set, built once: pc.is_in would hash the whole value set again for every block
        wanted = np.fromiter((i in wanted_ids for i in ids.to_pylist()), dtype=bool, count=len(ids))
        keep = pc.and_(has_id, pa.array(wanted))
    table = table.filter(keep)
    not_wanted = count_true(has_id) - table.num_rows
    raw = format_fields(table, fmt, cfg)
    description, features, raw_categories = raw["description"], raw["features"], raw["categories"]
    images, brand, main_category = raw["images"], raw["brand"], raw["main_category"]

    limit = int(cfg["max_text_chars"])
    title = clean_text(cap_text(table["title"], limit, "title", stats))
    description = clean_text(cap_text(description, limit, "description", stats))
    parts = [title, description]
    if cfg["include_features"] and features is not None:
        parts.append(clean_text(cap_text(features, limit, "features", stats)))
    text = join_text(parts)
    categories = category_paths(raw_categories, main_category, cfg, stats, categories_cache)
    categories = cap_list(pa.array(categories, type=pa.list_(pa.string())), cfg, "categories", stats)
    image_urls = cap_list(full_size_urls(images, bool(cfg["upgrade_thumbnails"])), cfg, "image_urls", stats)
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
    columns = {
        "item_id": table.column(METADATA_ID[fmt]),
        "title": title,
        "text": text,
        "categories": categories,
        "image_urls": image_urls,
        "brand": brand,
        "_score": score,
        "_row": pa.array(np.arange(row_offset, row_offset + table.num_rows, dtype=np.int64)),
    }
    return pa.table(columns), not_wanted


def collapse_duplicates(table: pa.Table) -> pa.Table:
    """One row per item_id: highest completeness score, earliest line among equals; file order is kept.

    Only the three key columns are sorted, and the (large) text columns are copied only when there are
    duplicates to drop.
    """
    keys = table.select(["item_id", "_score", "_row"])
    order = pc.sort_indices(
        keys, sort_keys=[("item_id", "ascending"), ("_score", "descending"), ("_row", "ascending")]
    ).to_numpy()
    ids = keys["item_id"].take(pa.array(order)).combine_chunks()
    first = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    table = table.select(ITEMS_SCHEMA.names)
    if not first.all():
        table = table.take(pa.array(np.sort(order[first])))
    return table.cast(ITEMS_SCHEMA)
